"""The CI gate on params changes, as a library; its entry point is pipelines/cli/check.py.

    repo.py     git and DVC queries: the DAG, what changed against the base, what that makes stale
    rerun.py    `dvc repro` of the stale stages, here or in a temporary clone on the tiny profile
    verdict.py  the gate's settings, the judgement of each gated metric, the Markdown summary
"""
