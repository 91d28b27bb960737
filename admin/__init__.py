"""What people and systems do to Hookpost, implemented once: used by the CLI, the HTTP API and the console.

``async with Admin.open(settings) as admin: await admin.events.list(...)``; operations that change something
take the ``actor`` (a token name, or ``cli:<user>``) and record it in the audit log.
"""

from hookpost.admin.core import Admin, os_actor

__all__ = ["Admin", "os_actor"]
