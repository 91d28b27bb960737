"""Hookpost's benchmark: ``python -m bench.run [--quick] [--only NAME ...]`` (see ``bench/README.md``).

Every process under test runs on its own so its CPU is measured separately: the dispatcher (``hookpost
dispatcher``), the store (``nx-27017``), the broker (``beam.smp``), the receivers (:mod:`bench.receiver`) and the
bare baselines (:mod:`bench.bare`).
"""
