"""Background jobs: a bulk restart of many events, or a webhook's replay, runs as a task in this process, its
progress in the store.

``GET /jobs/{id}`` reads the job document, so any server process can report on it. A job whose process stops
stays ``running`` in the store (the restarted part is done; run the same restart again to finish it: events
already restarted are skipped as in flight).
"""

import asyncio
import logging
from typing import TYPE_CHECKING

from hookpost.common.ids import new_id
from hookpost.common.models import utcnow
from hookpost.common.records import Job, JobStatus, ReplayCount, ReplayRequest
from hookpost.store.events import EventFilter

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

log = logging.getLogger("hookpost.admin")


class JobOps:
    """Start background jobs and read their progress."""

    def __init__(self, admin: "Admin") -> None:
        self.admin = admin
        self.tasks: set[asyncio.Task[None]] = set()

    async def get(self, job_id: str) -> Job:
        """Return the job ``job_id`` (raise :class:`NotFoundError` if there is none)."""
        return await self.admin.store.jobs.get(job_id)

    async def start_restart(self, flt: EventFilter, *, actor: str, force: bool = False) -> Job:
        """Start restarting every event matching ``flt`` in the background; return the job at once."""
        from hookpost.admin.events import describe_filter, has_conditions
        from hookpost.common.errors import InvalidInputError

        if not has_conditions(flt):
            raise InvalidInputError("a bulk restart needs at least one filter, such as status=failed")
        count = await self.admin.events.restart_count(flt, force)
        job = Job(id=new_id("job"), kind="restart", actor=actor, total=count.matched,
                  params={"filter": describe_filter(flt), "force": force})
        await self.admin.store.jobs.insert(job)
        task = asyncio.create_task(self._run_restart(job, flt, force, actor))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return job

    async def _run_restart(self, job: Job, flt: EventFilter, force: bool, actor: str) -> None:
        processed = 0
        pending: list[asyncio.Task[None]] = []

        def progress(n: int) -> None:
            nonlocal processed
            processed += n
            pending.append(asyncio.create_task(self.admin.store.jobs.set(job.id, processed=processed,
                                                                         updated_at=utcnow())))

        try:
            report = await self.admin.events.restart_matching(flt, actor=actor, force=force, progress=progress)
            await asyncio.gather(*pending, return_exceptions=True)
            now = utcnow()
            await self.admin.store.jobs.set(job.id, status=JobStatus.DONE.value, processed=processed,
                                            restarted=len(report.restarted), skipped=report.skipped_by_reason(),
                                            updated_at=now, finished_at=now)
        except Exception as exc:
            log.exception("restart job failed", extra={"job": job.id})
            await asyncio.gather(*pending, return_exceptions=True)
            now = utcnow()
            await self.admin.store.jobs.set(job.id, status=JobStatus.FAILED.value, error=str(exc)[:500],
                                            updated_at=now, finished_at=now)

    async def start_replay(self, webhook_id: str, request: ReplayRequest, *, actor: str) -> ReplayCount:
        """Count what a replay would publish, then publish it in the background; return the count with the job id
        at once (the job's ``processed`` counts the changes published)."""
        count, _ = await self.admin.replays.plan(webhook_id, request)
        job = Job(id=new_id("job"), kind="replay", actor=actor, total=count.replayed,
                  params={"webhook": webhook_id, **request.model_dump(exclude={"dry_run"})})
        await self.admin.store.jobs.insert(job)
        task = asyncio.create_task(self._run_replay(job, webhook_id, request, actor))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return count.model_copy(update={"dry_run": False, "job": job.id})

    async def _run_replay(self, job: Job, webhook_id: str, request: ReplayRequest, actor: str) -> None:
        processed = 0

        def progress(n: int) -> None:
            nonlocal processed
            processed += n

        try:
            count = await self.admin.replays.run(webhook_id, request, actor=actor, progress=progress)
            now = utcnow()
            await self.admin.store.jobs.set(job.id, status=JobStatus.DONE.value, processed=processed,
                                            total=count.replayed, updated_at=now, finished_at=now)
        except Exception as exc:
            log.exception("replay job failed", extra={"job": job.id})
            now = utcnow()
            await self.admin.store.jobs.set(job.id, status=JobStatus.FAILED.value, processed=processed,
                                            error=str(exc)[:500], updated_at=now, finished_at=now)

    async def wait(self) -> None:
        """Wait for every job this process started (tests, and a graceful stop)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
