"""The CI gate on params changes, as a library; its entry point is pipelines/cli/check.py
(docs/ci-gate.md explains it).

    repo.py      git and DVC queries: the DAG, what changed against the base, what the gated metrics need
    rerun.py     `dvc repro` here or in a temporary clone on a profile, base then head; the base's cache
    evidence.py  per-image results of the evaluate stages, and the extra seeds' runs (cached by content),
                 on the prepared data or on their own draw of it
    noise.py     the comparison of two sides' runs (seed spread and images in one interval; Welch's t
                 on redrawn runs' accuracies), Holm
    verdict.py   the gate's settings, the judgement of each gated metric, the verdict line
    summary.py   the Markdown summary a reviewer reads
"""
