"""The ``hookpost`` command line: thin commands over ``store``, ``producer`` and ``dispatcher``."""
