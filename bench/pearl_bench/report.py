"""Turning benchmark records into the comparison, per prompt class and overall: each method's tokens/s and
its ratio to ``ar``; for our speculative methods acceptance, accepted lengths, drafted rounds, the mean window,
forwards and round overhead; whether every output is token-identical to ``ar`` (where not: the first
differing position and the target's top-2 margin there).

Speeds are totals (all tokens / all wall time over the prompts), not means of per-prompt ratios. llama.cpp
runs the GGUF sources themselves (4-bit), so its outputs are not compared with ours.
"""
from __future__ import annotations

import json
from pathlib import Path

# Issue 15's targets on the default pair, printed against the measurements, never asserted. The last is its
# stretch target for the int4-target pair (printed for every pair: how far llama.cpp's plain decoding is)
STRETCH = "pearl(gamma=auto) vs llama.cpp(t=2), humaneval (stretch, int4-target pair)"
TARGETS = {"pearl(gamma=auto) vs ar, every class": 1.0, "pearl(gamma=auto) vs ar, humaneval": 2.0,
           "pearl(gamma=auto) vs llama.cpp-spec, humaneval": 1.0, STRETCH: 1.0}
OURS = ("sd", "pearl", "assisted")  # outputs of our target, compared with ar


def _sum(records: list[dict], key: str) -> float:
    return sum(r.get(key) or 0 for r in records)


def summarize(records: dict[str, dict], prompts, sweep_prompts, margin=None) -> dict:
    """``prompts``, ``sweep_prompts``: the run's Prompt objects (all, and the window sweeps');
    ``margin(prompt_id, ar_prefix)``: the target's top-2 logit gap."""
    categories = list(dict.fromkeys(p.category for p in prompts))
    groups = {"overall": [p.prompt_id for p in prompts]}
    groups.update({c: [p.prompt_id for p in prompts if p.category == c] for c in categories})
    return {"prompts": len(prompts), "classes": categories,
            "groups": {name: summarize_group(records, ids, margin) for name, ids in groups.items()},
            "sweeps": sweeps(records, {p.prompt_id for p in sweep_prompts})}


def summarize_group(records: dict[str, dict], prompt_ids: list[str], margin=None) -> dict:
    by_label: dict[str, list[dict]] = {}
    for r in records.values():
        if r["prompt_id"] in prompt_ids:
            by_label.setdefault(r["label"], []).append(r)
    rows = {label: row(runs) for label, runs in by_label.items() if len(runs) == len(prompt_ids)}  # not sweeps
    ar = rows.get("ar")
    for label, values in rows.items():
        values["vs_ar"] = values["tokens_per_s"] / ar["tokens_per_s"] if ar else None
        if label.startswith(OURS):
            values["identical_to_ar"], values["divergences"] = compare(by_label.get("ar", []), by_label[label], margin)
    return {"prompts": len(prompt_ids), "methods": dict(sorted(rows.items(), key=lambda item: _order(item[0])))}


def _order(label: str) -> tuple[int, str]:
    names = ("ar", "sd", "pearl", "assisted", "llama.cpp(", "llama.cpp-spec")
    return next((i for i, name in enumerate(names) if label.startswith(name)), len(names)), label


def row(runs: list[dict]) -> dict:
    tokens, wall = _sum(runs, "generated_tokens"), _sum(runs, "wall_s")
    values = {"prompts": len(runs), "tokens": int(tokens), "wall_s": wall,
              "tokens_per_s": tokens / wall if wall else 0.0}
    if any("target_forwards" in r for r in runs):
        drafted = _sum(runs, "draft_tokens")
        runs_between_rejections = sum(r["accepted_draft_tokens"] / r["mean_accepted_length"]
                                      for r in runs if r.get("mean_accepted_length"))
        drafted_rounds = _sum(runs, "drafted_rounds")
        values.update({
            "target_forwards": int(_sum(runs, "target_forwards")), "draft_forwards": int(_sum(runs, "draft_forwards")),
            "acceptance_rate": _sum(runs, "accepted_draft_tokens") / drafted if drafted else 0.0,
            "mean_accepted_length": (_sum(runs, "accepted_draft_tokens") / runs_between_rejections
                                     if runs_between_rejections else 0.0),
            "round_overhead": sum(r["round_overhead"] * r["wall_s"] for r in runs) / wall if wall else 0.0,
            "drafted_share": drafted_rounds / _sum(runs, "rounds") if _sum(runs, "rounds") else 0.0,
            "mean_gamma": drafted / drafted_rounds if drafted_rounds else 0.0,
            "sd_share": _sum(runs, "sd_rounds") / drafted_rounds if drafted_rounds else 0.0,  # of drafted rounds
        })
    if any("drafted_tokens" in r for r in runs):  # llama.cpp's speculative decoding
        drafted = _sum(runs, "drafted_tokens")
        values["acceptance_rate"] = _sum(runs, "accepted_tokens") / drafted if drafted else 0.0
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


def sweeps(records: dict[str, dict], prompt_ids: set[str]) -> dict[str, float]:
    """tokens/s of each fixed window on the sweep prompts."""
    out = {}
    for label in sorted({r["label"] for r in records.values() if "(gamma=" in r["label"] and "=auto" not in r["label"]}):
        runs = [r for r in records.values() if r["label"] == label and r["prompt_id"] in prompt_ids]
        wall = _sum(runs, "wall_s")
        out[label] = _sum(runs, "generated_tokens") / wall if wall else 0.0
    return out


def target_lines(summary: dict) -> list[str]:
    """The targets against the measurements (printed, never asserted)."""
    def ratio(group: str, other: str) -> float | None:
        methods = summary["groups"].get(group, {}).get("methods", {})
        mine = methods.get("pearl(gamma=auto)")
        theirs = next((v for k, v in methods.items() if k == other or k.startswith(f"{other}(")), None)
        return mine["tokens_per_s"] / theirs["tokens_per_s"] if mine and theirs else None

    by_class = [(ratio(c, "ar"), c) for c in summary["classes"] if ratio(c, "ar") is not None]
    worst = min(by_class, default=None)
    checks = [("pearl(gamma=auto) vs ar, every class", worst and worst[0], f" (lowest: {worst[1]})" if worst else ""),
              ("pearl(gamma=auto) vs ar, humaneval", ratio("humaneval", "ar"), ""),
              ("pearl(gamma=auto) vs llama.cpp-spec, humaneval", ratio("humaneval", "llama.cpp-spec"), ""),
              (STRETCH, ratio("humaneval", "llama.cpp(t=2)"), "")]
    lines = []
    for name, got, note in checks:
        if got is not None:
            target = TARGETS[name]
            verdict = "met" if got >= target else f"short by {target - got:.2f}x"
            lines.append(f"{name}: {got:.2f}x{note} (target >= {target}x: {verdict})")
    return lines


def markdown(summary: dict, title: str, extra: list[str] = ()) -> str:
    lines = [f"# {title}", "", f"{summary['prompts']} prompts; greedy; tokens/s = all tokens / all wall time; "
             f"every method on the same cores.", ""]
    columns = ["method", "tokens/s", "vs ar", "acceptance", "mean accepted", "drafted rounds", "of them SD",
               "mean window", "overhead", "identical to ar"]
    fmt = lambda v, spec, suffix="": "" if v is None else format(v, spec) + suffix  # noqa: E731
    for group, data in summary["groups"].items():
        lines += [f"## {group} ({data['prompts']} prompts)", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for label, v in data["methods"].items():
            share, sd_share = v.get("drafted_share"), v.get("sd_share")
            lines.append("| " + " | ".join([
                label, fmt(v["tokens_per_s"], ".2f"), fmt(v["vs_ar"], ".2f", "x"), fmt(v.get("acceptance_rate"), ".2f"),
                fmt(v.get("mean_accepted_length"), ".2f"), fmt(None if share is None else 100 * share, ".0f", "%"),
                fmt(None if sd_share is None else 100 * sd_share, ".0f", "%"), fmt(v.get("mean_gamma"), ".1f"),
                fmt(None if "round_overhead" not in v else 100 * v["round_overhead"], ".1f", "%"),
                v.get("identical_to_ar", "")]) + " |")
        divergences = [(label, d) for label, v in data["methods"].items() for d in v.get("divergences", [])]
        if divergences and group != "overall":
            lines += ["", "Divergences from ar (first differing position; margin = target's top-2 logit gap):"]
            for label, d in divergences:
                margin = "n/a" if d["margin"] is None else format(d["margin"], ".3g")
                lines.append(f"- {label} on {d['prompt_id']} at token {d['position']} (margin {margin})")
        lines.append("")
    if summary["sweeps"]:
        lines += ["Window sweep (first prompt of each class, tokens/s): " +
                  ", ".join(f"{k} {v:.2f}" for k, v in summary["sweeps"].items()), ""]
    targets = target_lines(summary)
    if targets or extra:
        lines += ["## Against the targets", ""] + [f"- {line}" for line in [*targets, *extra]]
    return "\n".join(lines) + "\n"


def chart(summary: dict, out_dir: Path) -> Path:
    """One panel per class (and overall): each method's tokens/s relative to ar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 4.2), squeeze=False, sharey=True)
    for ax, (group, data) in zip(axes[0], groups.items()):
        labels = list(data["methods"])
        ax.bar(range(len(labels)), [data["methods"][k]["vs_ar"] or 0 for k in labels],
               color=["#888" if k == "ar" else "#3a7" if k.startswith("pearl") else "#c84" if k.startswith("llama")
                      else "#47c" for k in labels])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(group, fontsize=9)
    axes[0][0].set_ylabel("tokens/s relative to ar")
    fig.tight_layout()
    path = out_dir / "speedup.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(summary: dict, out_dir: Path, title: str, extra: list[str] = ()) -> list[Path]:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(markdown(summary, title, extra))
    return [out_dir / "summary.json", out_dir / "summary.md", chart(summary, out_dir)]
