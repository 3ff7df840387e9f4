"""Turning benchmark records into the comparison: per setting and method, tokens/s and speedups, PEARL's
accepted lengths, forwards, overhead, and whether every output is token-identical to ``ar``.

Speeds are totals (all tokens / all wall time over the prompts), not means of per-prompt ratios. PEARL runs
one core per model in every setting, so its rows in "equal-cores" are its one-core-per-model runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from pearl.bench.methods import SETTINGS

TARGETS = {"vs_ar": 2.3, "vs_sd": 1.3}  # PEARL on the default pair, one core per model, HumanEval


def _sum(records: list[dict], key: str) -> float:
    return sum(r.get(key) or 0 for r in records)


def summarize(records: dict[str, dict], prompt_ids: list[str], margin=None) -> dict:
    """``margin(prompt_id, ar_prefix)``: the target's top-2 logit gap after that prefix (for divergences)."""
    by_label: dict[tuple[str, str], list[dict]] = {}
    for r in records.values():
        if r["prompt_id"] in prompt_ids:
            by_label.setdefault((r["setting"], r["label"]), []).append(r)
    settings = [s for s in SETTINGS if any(key[0] == s for key in by_label)]
    out = {"prompts": len(prompt_ids), "settings": {}}
    for setting in settings:
        rows, sources = {}, {}
        for (source, label), runs in sorted(by_label.items()):
            pearl_elsewhere = label.startswith("pearl") and source == "one-core-per-model"
            if (source == setting or pearl_elsewhere) and len(runs) == len(prompt_ids):  # sweeps: below
                rows[label], sources[label] = row(runs), source
        ar = rows.get("ar")
        sd_best = max((v for k, v in rows.items() if k.startswith("sd(")), key=lambda v: v["tokens_per_s"],
                      default=None)
        for label, values in rows.items():
            values["speedup_vs_ar"] = values["tokens_per_s"] / ar["tokens_per_s"] if ar else None
            values["speedup_vs_sd"] = values["tokens_per_s"] / sd_best["tokens_per_s"] if sd_best else None
            # against ar run with the same threads: a different thread count may round a near-tie differently
            values["identical_to_ar"], values["divergences"] = compare(by_label.get((sources[label], "ar"), []),
                                                                       by_label[(sources[label], label)], margin)
        out["settings"][setting] = {"methods": rows, "sweeps": sweeps(by_label, setting)}
    return out


def row(runs: list[dict]) -> dict:
    tokens, wall = _sum(runs, "generated_tokens"), _sum(runs, "wall_s")
    values = {"prompts": len(runs), "tokens": int(tokens), "wall_s": wall,
              "tokens_per_s": tokens / wall if wall else 0.0}
    if any("target_forwards" in r for r in runs):
        drafted = _sum(runs, "draft_tokens")
        runs_between_rejections = sum(r["accepted_draft_tokens"] / r["mean_accepted_length"]
                                      for r in runs if r.get("mean_accepted_length"))
        values.update({
            "target_forwards": int(_sum(runs, "target_forwards")), "draft_forwards": int(_sum(runs, "draft_forwards")),
            "acceptance_rate": _sum(runs, "accepted_draft_tokens") / drafted if drafted else 0.0,
            "mean_accepted_length": (_sum(runs, "accepted_draft_tokens") / runs_between_rejections
                                     if runs_between_rejections else 0.0),
            "round_overhead": sum(r["round_overhead"] * r["wall_s"] for r in runs) / wall if wall else 0.0,
            "gamma_used": runs[0].get("gamma_used"),
        })
    return values


def compare(ar_runs: list[dict], runs: list[dict], margin=None) -> tuple[str, list[dict]]:
    """("n/N", divergences): outputs token-identical to ar; where not, the first differing position."""
    reference = {r["prompt_id"]: r["tokens"] for r in ar_runs}
    same, divergences = 0, []
    for r in runs:
        expected = reference.get(r["prompt_id"])
        if expected is None:
            continue
        if r["tokens"] == expected:
            same += 1
            continue
        position = next((i for i, (a, b) in enumerate(zip(expected, r["tokens"])) if a != b),
                        min(len(expected), len(r["tokens"])))
        divergences.append({"prompt_id": r["prompt_id"], "position": position,
                            "ar_token": expected[position] if position < len(expected) else None,
                            "token": r["tokens"][position] if position < len(r["tokens"]) else None,
                            "margin": margin(r["prompt_id"], expected[:position]) if margin else None})
    return f"{same}/{sum(1 for r in runs if r['prompt_id'] in reference)}", divergences


def sweeps(by_label: dict, setting: str) -> dict[str, float]:
    """tokens/s of each gamma on the sweep prompts."""
    out = {}
    for (s, label), runs in by_label.items():
        if (s == setting or (s == "one-core-per-model" and label.startswith("pearl"))) and "(gamma=" in label \
                and "=auto" not in label:
            wall = _sum(runs, "wall_s")
            out[label] = _sum(runs, "generated_tokens") / wall if wall else 0.0
    return dict(sorted(out.items()))


def target_gap(summary: dict) -> list[str]:
    """PEARL against the targets, one core per model (printed, never asserted)."""
    rows = summary["settings"].get("one-core-per-model", {}).get("methods", {})
    lines = []
    for label, values in rows.items():
        if label.startswith("pearl") and values.get("speedup_vs_ar") is not None:
            for key, target in TARGETS.items():
                got = values[f"speedup_{key}"]
                if got is not None:
                    lines.append(f"{label} {key.replace('_', ' ')}: {got:.2f}x (target {target}x, "
                                 f"{'met' if got >= target else f'short by {target - got:.2f}x'})")
    return lines


def markdown(summary: dict, title: str) -> str:
    lines = [f"# {title}", "", f"{summary['prompts']} prompts; greedy; tokens/s = all tokens / all wall time.", ""]
    columns = ["method", "tokens/s", "vs ar", "vs sd", "mean accepted", "acceptance", "target fwd",
               "draft fwd", "overhead", "identical to ar"]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    drafted = lambda label, v, key, spec: fmt(v.get(key), spec) if label != "ar" else ""  # noqa: E731
    for setting, data in summary["settings"].items():
        lines += [f"## {setting}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for label, v in data["methods"].items():
            lines.append("| " + " | ".join([
                label, fmt(v["tokens_per_s"], ".2f"), fmt(v["speedup_vs_ar"], ".2f") + "x",
                fmt(v["speedup_vs_sd"], ".2f") + "x", drafted(label, v, "mean_accepted_length", ".2f"),
                drafted(label, v, "acceptance_rate", ".2f"), fmt(v.get("target_forwards"), "d"),
                drafted(label, v, "draft_forwards", "d"), fmt(100 * v["round_overhead"], ".1f") + "%"
                if "round_overhead" in v else "", v["identical_to_ar"]]) + " |")
        divergences = [(label, d) for label, v in data["methods"].items() for d in v["divergences"]]
        if divergences:
            lines += ["", "Divergences from ar (first differing position; margin = target's top-2 logit gap):"]
            for label, d in divergences:
                margin = "n/a" if d["margin"] is None else format(d["margin"], ".3g")
                lines.append(f"- {label} on {d['prompt_id']} at token {d['position']} (margin {margin})")
        if data["sweeps"]:
            lines += ["", "Gamma sweep (sweep prompts, tokens/s): " +
                      ", ".join(f"{k} {v:.2f}" for k, v in data["sweeps"].items())]
        lines.append("")
    gap = target_gap(summary)
    if gap:
        lines += ["## Against the targets (one core per model)", ""] + [f"- {g}" for g in gap]
    return "\n".join(lines) + "\n"


def charts(summary: dict, records: dict[str, dict], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(summary["settings"]), figsize=(6 * len(summary["settings"]), 4), squeeze=False)
    for ax, (setting, data) in zip(axes[0], summary["settings"].items()):
        labels = list(data["methods"])
        speedups = [data["methods"][k]["speedup_vs_ar"] or 0 for k in labels]
        ax.bar(labels, speedups, color=["#888" if k == "ar" else "#3a7" if k.startswith("pearl") else "#47c"
                                        for k in labels])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(setting)
        ax.set_ylabel("speedup vs ar (tokens/s)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(out_dir / "speedup.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r_label in sorted({r["label"] for r in records.values() if r["setting"] == "one-core-per-model"
                           and r["method"] in ("sd", "pearl") and r.get("round_tokens")}):
        sizes = [n for r in records.values() if r["label"] == r_label and r["setting"] == "one-core-per-model"
                 for n in r["round_tokens"]]
        ax.hist(sizes, bins=range(1, max(sizes) + 2), alpha=0.5, label=r_label, align="left")
    ax.set_xlabel("tokens accepted per verification round")
    ax.set_ylabel("rounds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "accepted_lengths.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write(summary: dict, records: dict[str, dict], out_dir: Path, title: str) -> list[Path]:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(markdown(summary, title))
    return [out_dir / "summary.json", out_dir / "summary.md", *charts(summary, records, out_dir)]
