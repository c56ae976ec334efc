"""The seeded, stratified split of your own image folder (pipelines/data/folder.py): which file goes to
training, validation and the held-out test, with the dataset's limits counted per class."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipelines.errors import DataError

SPLITS = ("train", "val", "test")


def _limit(n: int, limit: int) -> int:
    return n if limit <= 0 else min(n, limit)


def plan_splits(root: Path, layout: str, by: dict[str, dict[str, list[Path]]], classes: list[str],
                train_limit: int, val_limit: int, test_limit: Optional[int], seed: int) -> dict[str, list[tuple[Path, int]]]:
    """{split: [(file, class index)]}: limits count per class; seeded and stratified."""
    rng = np.random.default_rng([seed, 2])
    out: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for k, cls in enumerate(classes):
        if layout == "splits":
            tr = list(rng.permutation(len(by["train"][cls])))[: _limit(len(by["train"][cls]), train_limit)]
            out["train"] += [(by["train"][cls][i], k) for i in sorted(tr)]
            pool = by["val"][cls]
            if test_limit is not None and "test" in by:
                te = list(rng.permutation(len(by["test"][cls])))[: _limit(len(by["test"][cls]), test_limit)]
                out["test"] += [(by["test"][cls][i], k) for i in sorted(te)]
                test_from_val = None
            else:
                test_from_val = test_limit
            order = rng.permutation(len(pool))
            nv = _limit(len(pool), val_limit)
            if test_from_val is not None:
                nv = min(val_limit, len(pool)) if val_limit > 0 else 0
                nt = len(pool) - nv if test_from_val == 0 else min(test_from_val, len(pool) - nv)
                if nv < 1 or nt < 1:
                    raise DataError(f"{root / 'val' / cls}: {len(pool)} image(s), too few for val_limit {val_limit} "
                                    f"and a test split (test_limit {test_from_val}); add images or a test/ folder")
                out["test"] += [(pool[i], k) for i in sorted(order[nv:nv + nt])]
            out["val"] += [(pool[i], k) for i in sorted(order[:nv])]
            continue
        files = by[""][cls]
        if val_limit <= 0:
            raise DataError(f"{root}: has no val/ folder, so val_limit must say how many images per class to hold "
                            f"out for validation (it is {val_limit})")
        need_test = 0 if test_limit is None else max(test_limit, 1)
        need = val_limit + max(train_limit, 1) + need_test
        if len(files) < need:
            raise DataError(f"{root / cls}: {len(files)} image(s), fewer than the splits need ({val_limit} validation "
                            f"+ {max(train_limit, 1)} training" + (f" + {need_test} test" if need_test else "")
                            + "); add images or lower the limits")
        order = rng.permutation(len(files))
        nv, rest = val_limit, len(files) - val_limit
        if test_limit is None:
            nt, ntr = 0, _limit(rest, train_limit)
        elif test_limit == 0:   # test takes every image training leaves, so training needs a limit
            if train_limit <= 0:
                raise DataError(f"{root}: train_limit 0 and test_limit 0 both ask for every image left; "
                                "give one of them a number")
            ntr = train_limit
            nt = rest - ntr
        else:
            nt = test_limit
            ntr = _limit(rest - nt, train_limit)
        out["val"] += [(files[i], k) for i in sorted(order[:nv])]
        out["train"] += [(files[i], k) for i in sorted(order[nv:nv + ntr])]
        out["test"] += [(files[i], k) for i in sorted(order[nv + ntr:nv + ntr + nt])]
    return out
