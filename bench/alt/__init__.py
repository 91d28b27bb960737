"""The baselines of ``python -m bench.alternatives``: the same webhook job written the way teams usually write it,
as a Dramatiq actor (:mod:`bench.alt.dramatiq_worker`) and as a Celery task (:mod:`bench.alt.celery_worker`),
both running the plain synchronous job of :mod:`bench.alt.job`. Nothing here imports Hookpost.
"""
