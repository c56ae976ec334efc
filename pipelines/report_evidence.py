"""The measured evidence behind the lab's comments, for the report (pipelines/report.py).

The lab answered its questions with adjectives ("overfitting", "more separated", "a cheaper
network loses little"); each function here answers one of them with numbers read from the stage
outputs and a sentence generated from those numbers, and states the rule it applied so a reader
can recompute it. Functions write into report.py's Markdown document (`doc`: add, table, heading,
figure, not_run) and take what report.py already read and checked (train.json dicts, history
rows, embed.json layers, per_class.csv rows).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

from pipelines.train import diagnosis

if TYPE_CHECKING:  # only for annotations: report.py imports this module
    from pipelines.report import _Doc

MINUS = "−"  # a real minus sign: "-0.40 pp" reads as a dash in prose


# ---------------------------------------------------------------- formatting

def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Optional[float]) -> str:
    return f"{x:.2f} %" if finite(x) else "—"


def loss(x: Optional[float]) -> str:
    return f"{x:.4f}" if finite(x) else "—"


def pp(ours: Optional[float], lab: Optional[float]) -> str:
    return f"{ours - lab:+.2f} pp" if finite(ours) and finite(lab) else "—"


def num(x: object) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "—"
    return str(x)


def signed(x: float, digits: int = 2, unit: str = "") -> str:
    return f"{x:+.{digits}f}{unit}".replace("-", MINUS)


def _ratio(a: float, b: float, fewer: str, more: str) -> str:
    """'11.3x fewer parameters' when a > b, '1.2x more parameters' when a < b."""
    if not (finite(a) and finite(b)) or a <= 0 or b <= 0:
        return "—"
    return f"{a / b:.1f}x {fewer}" if a >= b else f"{b / a:.1f}x {more}"


# ---------------------------------------------------------------- statistics

def mean_std(xs: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); no deviation from one run."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else None)


def t_interval(xs: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Student-t confidence interval of the mean; None below two runs (no spread to scale)."""
    from scipy.stats import t

    m, s = mean_std(xs)
    if s is None:
        return None
    half = t.ppf(0.5 + level / 2, len(xs) - 1) * s / math.sqrt(len(xs))
    return m - half, m + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances), the seed-to-seed noise of two options."""
    from scipy.stats import t

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    if va + vb == 0:  # identical runs on both sides: any difference is exact, none is noise
        return 1.0 if ma == mb else 0.0
    stat = (ma - mb) / math.sqrt(va + vb)
    terms = (va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0)
    df = (va + vb) ** 2 / terms
    return float(2 * t.sf(abs(stat), df))


def two_proportion_p(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p of the two-proportion z-test (accuracies in %): the sampling noise of the evaluation set."""
    a, b = p1 / 100, p2 / 100
    pool = (a * n1 + b * n2) / (n1 + n2)
    se = math.sqrt(max(pool * (1 - pool), 1e-12) * (1 / n1 + 1 / n2))
    return math.erfc(abs(a - b) / se / math.sqrt(2))


NOISE_P = 0.05   # a difference with a two-sided p above this is within noise


def p_text(p: float) -> str:
    return "below 0.001" if p < 0.001 else f"{p:.3g}"


def binomial_se(acc: float, n: int) -> float:
    a = acc / 100
    return math.sqrt(max(a * (1 - a), 1e-12) / max(n, 1)) * 100


# ---------------------------------------------------------------- curve diagnosis

def diagnosis_of(train: Optional[dict], history: Optional[list[dict]], n_val: Optional[int]) -> Optional[dict]:
    """The stage's own diagnosis; recomputed from history.csv for a train.json that predates it."""
    if train is not None and isinstance(train.get("diagnosis"), dict) and isinstance(train["diagnosis"].get("verdict"), str):
        return train["diagnosis"]
    if history is None:
        return None
    return {**diagnosis.diagnose(history, n_val or 0), "recomputed": True}


def diagnosis_row(variant: str, d: Optional[dict], epochs: object) -> tuple:
    if d is None:
        return (f"`{variant}`", "not run", "—", "—", "—", "—", "—")
    return (f"`{variant}`", num(epochs), num(d.get("min_val_loss_epoch")), num(d.get("best_acc_epoch")),
            loss(d.get("final_loss_gap")), pp(d.get("final_acc_gap"), 0.0),
            d["verdict"] + (" (recomputed from history.csv)" if d.get("recomputed") else ""))


def diagnosis_table(doc: "_Doc", rows: Sequence[tuple[str, Optional[dict], object]]) -> None:
    doc.table(["variant", "epochs", "min val loss epoch", "best accuracy epoch", "final loss gap (val − train)",
               "final accuracy gap (train − val)", "verdict"],
              [diagnosis_row(v, d, e) for v, d, e in rows], right=(1, 2, 3, 4, 5))
    rules = {d["rule"] for _, d, _ in rows if d is not None and isinstance(d.get("rule"), str)}
    rules = rules or {diagnosis.RULE}
    if len(rules) == 1:
        doc.add(f"**The rule.** {rules.pop()}")
    else:  # runs diagnosed by different versions of the rule: show each, never silently one
        doc.add("**The rules** (runs were diagnosed by different versions):", *[f"- {r}" for r in sorted(rules)])


def reproduces(short: Sequence[dict], long: Sequence[dict]) -> str:
    """Whether the longer run's first epochs are the shorter run's history, number for number."""
    cols = ("train_loss", "train_acc", "val_loss", "val_acc")
    by_epoch = {r["epoch"]: r for r in long}
    worst = (0.0, "", 0)
    missing = [r["epoch"] for r in short if r["epoch"] not in by_epoch]
    if missing:
        return f"cannot tell: the longer run has no epoch {missing[0]}"
    for r in short:
        for c in cols:
            a, b = r[c], by_epoch[r["epoch"]][c]
            if finite(a) and finite(b) and abs(a - b) > worst[0]:
                worst = (abs(a - b), c, r["epoch"])
    if worst[0] == 0:
        return "same seed, same numbers: yes"
    return (f"same seed, same numbers: no — largest absolute difference {worst[0]:.4g} "
            f"({worst[1].replace('_', ' ')}, epoch {worst[2]})")


def overfit_epoch(d: Optional[dict]) -> Optional[int]:
    if d is None or not d["verdict"].startswith("overfitting from epoch "):
        return None
    return int(d["verdict"].split()[3].rstrip(":"))


def against_claim(d: Optional[dict], claim_epoch: int) -> str:
    """Agreement of our verdict with a lab claim 'overfitting after epoch N' (from epoch N + 1)."""
    if d is None:
        return "not run"
    start = overfit_epoch(d)
    if start is None:
        return "disagrees: by the rule our curves do not show overfitting"
    off = start - (claim_epoch + 1)
    when = "at the same epoch" if off == 0 else f"{abs(off)} epoch{'s' if abs(off) > 1 else ''} {'later' if off > 0 else 'earlier'}"
    return f"agrees on overfitting, {when}: ours from epoch {start}, the lab's after epoch {claim_epoch}"


# ---------------------------------------------------------------- a cheaper network

def cheaper_network(doc: "_Doc", base: tuple[str, Optional[dict]], small: tuple[str, Optional[dict]]) -> None:
    (bv, bt), (sv, st) = base, small
    if bt is None or st is None:
        missing = [f"`metrics/{v}/train.json`" for v, t in (base, small) if t is None]
        doc.not_run(" and ".join(missing) + (" is" if len(missing) == 1 else " are") + " missing")
        return

    def get(t: dict, k: str) -> Optional[float]:
        return t.get(k) if finite(t.get(k)) else None

    rows = []
    for label, key, fmt, cmp in (
            ("trainable parameters", "params_total", num, lambda a, b: _ratio(a, b, "fewer", "more")),
            ("FLOPs per image (forward)", "flops_per_image", num, lambda a, b: _ratio(a, b, "fewer", "more")),
            ("best validation accuracy", "best_val_acc", pct, lambda a, b: pp(b, a)),
            ("training throughput (images/s)", "train_img_per_s", lambda x: "—" if x is None else f"{x:,.0f}",
             lambda a, b: _ratio(b, a, "faster", "slower"))):
        a, b = get(bt, key), get(st, key)
        rows.append((label, fmt(a), fmt(b), cmp(a, b) if a is not None and b is not None else "—"))
    doc.table(["", f"`{bv}`", f"`{sv}`", f"`{sv}` against `{bv}`"], rows, right=(1, 2, 3))
    parts = [r[3] + (" parameters" if i == 0 else " FLOPs per image" if i == 1 else "")
             for i, r in enumerate(rows) if i < 2 and r[3] != "—"]
    if rows[3][3] != "—":
        parts.append(f"trains {rows[3][3]}")
    acc_a, acc_b = get(bt, "best_val_acc"), get(st, "best_val_acc")
    if acc_a is not None and acc_b is not None:
        n = bt.get("val_n") if isinstance(bt.get("val_n"), int) else None
        noise = ""
        if n:
            se = math.sqrt(binomial_se(acc_a, n) ** 2 + binomial_se(acc_b, n) ** 2)
            noise = (f", {'within' if abs(acc_b - acc_a) <= 2 * se else 'beyond'} the ±{2 * se:.2f} pp "
                     f"(two standard errors) a validation set of {n:,} images can resolve")
        parts.append(f"{signed(acc_b - acc_a, 2, ' pp')} best validation accuracy{noise}")
    if parts:
        doc.add(f"**Reading.** `{sv}` against `{bv}`: " + ", ".join(parts) + ".")
    if bt.get("device") != st.get("device") and isinstance(bt.get("device"), str):
        doc.add(f"The throughputs were measured on different devices ({bt.get('device')} and {st.get('device')}): "
                "their ratio is not the networks' alone.")


# ---------------------------------------------------------------- embeddings

EMBED_COLUMNS = (  # key in embed.json layers, header, formatter
    ("silhouette_features", "silhouette (features)", lambda x: f"{x:.3f}"),
    ("silhouette_tsne", "silhouette (t-SNE)", lambda x: f"{x:.3f}"),
    ("knn_acc_features", "k-NN accuracy (features)", pct),
    ("knn_acc_tsne", "k-NN accuracy (t-SNE)", pct),
    ("linear_probe_acc", "linear-probe accuracy", pct),
    ("trustworthiness", "t-SNE trustworthiness", lambda x: f"{x:.3f}"),
)


def _fmt(info: dict, key: str, f) -> str:
    return f(info[key]) if finite(info.get(key)) else "—"


def embedding_table(doc: "_Doc", layers: dict) -> None:
    doc.table(["layer", "module", "dim", *[h for _, h, _ in EMBED_COLUMNS]],
              [(name, f"`{info['module']}`", f"{info['dim']:,}", *(_fmt(info, k, f) for k, _, f in EMBED_COLUMNS))
               for name, info in layers.items()], right=tuple(range(2, 3 + len(EMBED_COLUMNS))))


def _sil(info: dict) -> Optional[float]:
    for k in ("silhouette_features", "silhouette_tsne"):
        if finite(info.get(k)):
            return info[k]
    return None


def layers_sentence(layers: dict) -> Optional[str]:
    """Which of the intermediate and final layers separates the classes more, and by how much."""
    mid, fin = layers.get("intermediate"), layers.get("final")
    if not isinstance(mid, dict) or not isinstance(fin, dict):
        return None
    sm, sf = _sil(mid), _sil(fin)
    if sm is None or sf is None:
        return None
    more, less = (("final", fin), ("intermediate", mid)) if sf >= sm else (("intermediate", mid), ("final", fin))
    key = "silhouette_features" if finite(mid.get("silhouette_features")) and finite(fin.get("silhouette_features")) \
        else "silhouette_tsne"
    out = (f"The {more[0]} layer (`{more[1]['module']}`) separates the classes more than the {less[0]} one "
           f"(`{less[1]['module']}`): silhouette {more[1][key]:.3f} vs {less[1][key]:.3f} "
           f"({'on the features' if key == 'silhouette_features' else 'on the t-SNE map'}, {signed(more[1][key] - less[1][key], 3)})")
    extra = []
    for k, label in (("knn_acc_features", "k-NN accuracy"), ("linear_probe_acc", "linear-probe accuracy")):
        if finite(more[1].get(k)) and finite(less[1].get(k)):
            d = more[1][k] - less[1][k]
            extra.append(f"{label} {more[1][k]:.2f} % vs {less[1][k]:.2f} % ({signed(d, 2, ' pp')}"
                         + (", the other way round" if d < 0 else "") + ")")
    out += (", " + ", ".join(extra) if extra else "") + "."
    shaky = [f"{n} ({info['trustworthiness']:.3f})" for n, info in (("intermediate", mid), ("final", fin))
             if finite(info.get("trustworthiness")) and info["trustworthiness"] < 0.9]
    if shaky:
        out += (" Trustworthiness below 0.9 for " + ", ".join(shaky)
                + ": that 2-D picture misplaces many neighbours; trust the feature-space figures over it.")
    return out


def compare_finals(this: tuple[str, dict], other: tuple[str, dict]) -> Optional[str]:
    (tv, t), (ov, o) = this, other
    st, so = _sil(t), _sil(o)
    if st is None or so is None:
        return None
    # Below half the printed precision the two are the same to the reader: no "more" or "less".
    word = "about as" if abs(st - so) < 0.0005 else ("more" if st > so else "less")
    out = f"Against `{ov}`'s final layer, `{tv}`'s classes are {word} separated: silhouette {st:.3f} vs {so:.3f}"
    if finite(t.get("knn_acc_features")) and finite(o.get("knn_acc_features")):
        out += f", k-NN accuracy {t['knn_acc_features']:.2f} % vs {o['knn_acc_features']:.2f} %"
    return out + "."


def separability(doc: "_Doc", finals: Sequence[tuple[str, str, dict]]) -> None:
    """Part 1.3's question, linear separability of the two classes, answered per option."""
    doc.table(["option", "variant", "final layer", "linear-probe accuracy", "silhouette (features)",
               "silhouette (t-SNE)", "points"],
              [(label, f"`{v}`", f"`{info['module']}`", _fmt(info, "linear_probe_acc", pct),
                _fmt(info, "silhouette_features", lambda x: f"{x:.3f}"),
                _fmt(info, "silhouette_tsne", lambda x: f"{x:.3f}"), num(info.get("subsample")))
               for label, v, info in finals], right=(3, 4, 5, 6))
    probe = [(info["linear_probe_acc"], label) for label, _, info in finals if finite(info.get("linear_probe_acc"))]
    if len(probe) >= 2:
        probe.sort(reverse=True)
        doc.add(f"Most linearly separable: **{probe[0][1]}** (a linear classifier on its final-layer features reaches "
                f"{probe[0][0]:.2f} %); least: {probe[-1][1]} ({probe[-1][0]:.2f} %), "
                f"{signed(probe[-1][0] - probe[0][0], 2, ' pp')}. The linear probe is a logistic regression, 5-fold "
                "cross-validated on the embedded validation points: it measures how linearly separable the "
                "features are, not the option's own accuracy.")


# ---------------------------------------------------------------- confusions, per class

def per_class(doc: "_Doc", rows: Sequence[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (r["recall"], r["class"]))
    doc.table(["class (worst first)", "accuracy (recall)", "precision", "F1", "images"],
              [(r["class"], pct(r["recall"] * 100), pct(r["precision"] * 100), f"{r['f1']:.3f}", f"{r['support']:,}")
               for r in ordered], right=(1, 2, 3, 4))
    if len(ordered) >= 2:
        doc.add(f"Worst class: {ordered[0]['class']} ({ordered[0]['recall'] * 100:.2f} %); best: "
                f"{ordered[-1]['class']} ({ordered[-1]['recall'] * 100:.2f} %).")


# ---------------------------------------------------------------- seed noise (Part 1.3)

def mean_cell(xs: Sequence[float]) -> str:
    if not xs:
        return "—"
    m, s = mean_std(xs)
    return f"{m:.2f} %" if s is None else f"{m:.2f} ± {s:.2f} %"


def noise_table(doc: "_Doc", options: Sequence[dict]) -> None:
    """options: {label, variant, val: [acc per run], test: [acc per run], lab, val_n, expected}."""
    rows = []
    for o in options:
        ci = t_interval(o["val"]) if len(o["val"]) >= 2 else None
        m = mean_std(o["val"])[0] if o["val"] else None
        runs = "not run" if not o["val"] else (f"{len(o['val'])}" + (f" of {o['expected']}" if o["expected"] > len(o["val"]) else ""))
        rows.append((o["label"], f"`{o['variant']}`", runs, mean_cell(o["val"]),
                     "—" if ci is None else f"{ci[0]:.2f} – {ci[1]:.2f} %", mean_cell(o["test"]),
                     pct(o["lab"]), pp(m, o["lab"])))
    doc.table(["option", "variant", "runs (n)", "validation accuracy, mean ± std", "95 % CI (Student t)",
               "test accuracy, mean ± std", "lab", "mean − lab"], rows, right=(2, 3, 4, 5, 6, 7))


def noise_pairs(doc: "_Doc", options: Sequence[dict]) -> None:
    ran = [o for o in options if o["val"]]
    if len(ran) < 2:
        return
    rows, within = [], []
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            ma, mb = mean_std(a["val"])[0], mean_std(b["val"])[0]
            if len(a["val"]) >= 2 and len(b["val"]) >= 2:
                p, test = welch_p(a["val"], b["val"]), "Welch t over seeds"
            elif a.get("val_n") and b.get("val_n"):
                p, test = two_proportion_p(ma, a["val_n"], mb, b["val_n"]), "two-proportion z (n = 1)"
            else:
                rows.append((f"{a['label']} vs {b['label']}", pp(mb, ma), "—", "—", "untestable: one run, no set size"))
                continue
            reading = "within noise" if p > NOISE_P else "beyond noise"
            if p > NOISE_P:
                within.append(f"{a['label']} vs {b['label']}")
            rows.append((f"{a['label']} vs {b['label']}", pp(mb, ma), test, p_text(p), reading))
    doc.table(["pair", "difference of means (second − first)", "test", "p", "reading"], rows, right=(1, 3))
    doc.add("**The rule.** A pair is within noise when its two-sided p > 0.05: Welch's t-test on the per-seed "
            "validation accuracies when both options have at least two runs; otherwise (one run) the two-proportion "
            "z-test on the validation set's images, which measures only the sampling noise of that set, not the "
            "seed-to-seed spread.")
    doc.add("Within noise: " + ("; ".join(within) if within else "none of the pairs") + ".")
