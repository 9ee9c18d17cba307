"""``evaluation.md`` from an ``okcell evaluate`` result, and several results side by side (``--compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from okcell.schema import ConfigError, read_json

TEST_THRESHOLD_NOTE = (
    "Recall at 1 % and 0.1 % false rejects uses thresholds set on the test OK images themselves (the smallest score "
    "with at most floor(target x n) test OK images above it; with fewer than 1/target test OK images that is the "
    "highest test OK score). They compare methods at the same false-reject rate; they are not what the recipe "
    "promises, which is the row at the recipe's threshold.")


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rate(entry: dict[str, Any] | None, bound: str = "upper95") -> str:
    """``1.7 % (2/120, 95 % upper 5.1 %)`` from a RateEstimate's JSON."""
    if not entry:
        return "-"
    side = "upper" if bound == "upper95" else "lower"
    return f"{pct(entry['rate'])} ({entry['events']}/{entry['total']}, 95 % {side} {pct(entry[bound])})"


def short(entry: dict[str, Any] | None) -> str:
    """``1.7 % (2/120)``."""
    return "-" if not entry else f"{pct(entry['rate'])} ({entry['events']}/{entry['total']})"


def recall_all(risk: dict[str, Any]) -> dict[str, Any] | None:
    """Recall over all defect types from a Risk's JSON (the complement of its escape rate)."""
    escape = risk.get("escape")
    if not escape:
        return None
    caught = escape["total"] - escape["events"]
    return {"events": caught, "total": escape["total"], "rate": caught / escape["total"], "lower95": 1.0 - escape["upper95"]}


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``a.b.c: value`` (lists of numbers stay one value)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def _ms(cycle: dict[str, Any], stage: str = "total") -> str:
    entry = cycle.get(stage)
    return "-" if entry is None else f"{entry['p50']:.0f} / {entry['p99']:.0f} ms"


def markdown(result: dict[str, Any]) -> str:
    """The whole report."""
    data, model, recipe = result["data"], result["model"], result["recipe"]
    at_recipe, at_test = result["at_recipe_threshold"], result["at_test_frr"]
    nok_counts = ", ".join(f"{name} {count}" for name, count in data["test_nok"].items()) or "none"
    lines = [
        f"# okcell evaluate: {result['label']}", "",
        f"- data: `{data['root']}`: {data['train_ok']} train OK, {data['test_ok']} test OK, test NOK {nok_counts}, "
        f"{data['masks']} masks",
        f"- model: `{model['file']}` {model['input_size'][0]}x{model['input_size'][1]} px, block(s) "
        f"{','.join(str(x) for x in model['layers'])} ({model['layer_fusion']}), backend {model['backend']}",
        f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (load {result['machine']['load_average_1min']} "
        f"when the run started); okcell {result['okcell_version']}, {result['created']}",
        f"- recipe `{recipe['id']}`: threshold {recipe['threshold']:.4f} for a target false-reject rate of "
        f"{pct(recipe['target_frr'])}",
        "- time: " + ", ".join(f"{name} {value:.0f} s" for name, value in result["durations_s"].items()),
        "", "## Summary", "",
    ]
    calibration_frr = at_recipe["calibration_frr"]
    holds = "holds" if at_recipe["frr_bound_holds"] else (
        f"**does not hold** (that many false rejects: {pct(at_recipe['frr_chance_at_bound'])} chance at the bound)")
    rows = [
        ("image AUROC", num(result["image"]["auroc"])),
        ("false-reject rate at the recipe threshold (test OK)", rate(at_recipe["frr"])),
        ("false-reject rate stated at calibration (held-out OK scores)",
         f"{rate(calibration_frr)}: the bound {holds} on the test OK"),
        ("escape rate at the recipe threshold (test NOK)", rate(at_recipe.get("escape"))),
    ]
    if at_recipe.get("expected_frr") is not None:
        rows.insert(2, ("false-reject rate the recipe expects on new parts", pct(at_recipe["expected_frr"], 2)))
    for risk in at_test:
        rows.append((f"recall at {pct(risk['target_frr'], 2 if risk['target_frr'] < 0.01 else 1)} false rejects "
                     f"(threshold {risk['threshold']:.4f} from test OK)", rate(recall_all(risk), "lower95")))
    pixel = result.get("pixel")
    if pixel:
        rows += [("pixel AUROC", num(pixel["auroc"])),
                 (f"AUPRO (FPR up to {pct(pixel['aupro_fpr_limit'], 0)})", num(pixel["aupro"]))]
    else:
        rows.append(("pixel AUROC / AUPRO", "- (no masks)"))
    rows.append(("cycle time p50 / p99 (inspection, all stages)", _ms(result["cycle_ms"])))
    lines += table(("measure", "value"), rows)
    lines += ["", TEST_THRESHOLD_NOTE, ""]
    if pixel:
        lines += [f"Pixel metrics over {pixel['images']} test images ({pixel['defect_images']} with defects), maps and "
                  f"masks scaled to at most {pixel['max_side_px']} px on the longer side.", ""]

    lines += ["## Per defect type", ""]
    per_defect = []
    for name, count in data["test_nok"].items():
        per_defect.append([name, count, num(result["image"]["auroc_per_defect"].get(name)),
                           rate(at_recipe["recall"].get(name), "lower95")]
                          + [rate(risk["recall"].get(name), "lower95") for risk in at_test])
    lines += table(["defect", "images", "AUROC", "recall at recipe threshold"]
                   + [f"recall at {pct(r['target_frr'], 2 if r['target_frr'] < 0.01 else 1)} test FRR" for r in at_test],
                   per_defect) + [""]
    lines += _robustness_lines(result.get("robustness"))
    lines += _synthetic_lines(result.get("synthetic"))
    lines += ["## Cycle time", ""]
    lines += table(("stage", "p50 ms", "p99 ms", "inspections"),
                   [(stage, f"{v['p50']:.1f}", f"{v['p99']:.1f}", v["count"]) for stage, v in result["cycle_ms"].items()])
    lines += ["", "## Recipe settings", ""]
    lines += table(("setting", "value"), [(f"`{key}`", f"`{value}`") for key, value in flatten(recipe["settings"]).items()])
    lines += ["", "## Confusion (rows: truth, columns: decision at the recipe threshold)", "", "```"]
    lines += result["confusion"] + ["```", ""]
    errors = result.get("errors", [])
    lines += [f"## Errors ({len(errors)})", ""] + ([f"- `{e['path']}`: {e['error']}" for e in errors] or ["none"]) + [""]
    if result.get("figures"):
        lines += ["## Figures", ""] + [f"![{name}]({file})" for name, file in result["figures"].items()] + [""]
    return "\n".join(lines)


def _robustness_lines(robustness: dict[str, Any] | None) -> list[str]:
    if not robustness:
        return []
    lines = ["## Robustness (test OK images changed slightly, recipe threshold "
             f"{robustness['threshold']:.4f})", ""]
    lines += table(("change", "what", "false-reject rate", "median score", "errors"),
                   [(row["name"], row["description"], rate(row["frr"]), num(row["median_score"], 4), row["errors"])
                    for row in robustness["rows"]])
    return lines + ["", f"Cost: {robustness['inspections']} extra inspections, {robustness['seconds']:.0f} s.", ""]


def _synthetic_lines(synthetic: dict[str, Any] | None) -> list[str]:
    if not synthetic:
        return []
    lines = ["## Synthetic defects as a stand-in for real ones", ""]
    if "error" in synthetic:
        return lines + [f"not run: {synthetic['error']}", ""]
    names = list(synthetic["auroc"])
    rows = [[row["threshold_name"], f"{row['threshold']:.4f}"] + [rate(row["recall"].get(n), "lower95") for n in names]
            for row in synthetic["rows"]]
    rows.append(["AUROC", ""] + [num(synthetic["auroc"][n]) for n in names])
    lines += table(["threshold", "value"] + [f"recall {n}" for n in names], rows)
    return lines + ["", f"{synthetic['per_kind']} synthetic defects of each kind (`okcell synthesize`) drawn on the test "
                    "OK images, scored by the same recipe; real = all real defect types together. "
                    f"{synthetic['errors']} error(s).", ""]


def load_result(path: Path) -> dict[str, Any]:
    """A complete ``evaluation.json``; ConfigError naming the file otherwise."""
    data = read_json(Path(path), missing="not found; expected an evaluation.json written by `okcell evaluate`")
    if not isinstance(data, dict) or data.get("status") != "complete":
        raise ConfigError(f"{path}: not a complete `okcell evaluate` result (status {data.get('status') if isinstance(data, dict) else None!r})")
    return data


def compare(results: list[dict[str, Any]]) -> str:
    """Runs side by side: one column per run, one row per measure (Markdown)."""
    header = ["measure"] + [r["label"] for r in results]
    rows: list[list[str]] = []

    def row(name: str, cell: Any) -> None:
        rows.append([name] + [cell(r) for r in results])

    row("data", lambda r: Path(r["data"]["root"]).name)
    row("model", lambda r: "{}x{} px, block {}".format(*r["model"]["input_size"], ",".join(map(str, r["model"]["layers"]))))
    row("backend", lambda r: r["model"]["backend"])
    row("image AUROC", lambda r: num(r["image"]["auroc"]))
    row("FRR at recipe threshold", lambda r: rate(r["at_recipe_threshold"]["frr"]))
    row("FRR expected by the recipe", lambda r: pct(r["at_recipe_threshold"].get("expected_frr"), 2))
    row("stated FRR bound holds", lambda r: "yes" if r["at_recipe_threshold"]["frr_bound_holds"] else "NO")
    row("escape rate at recipe threshold", lambda r: rate(r["at_recipe_threshold"].get("escape")))
    for index, target in enumerate(_targets(results)):
        label = pct(target, 2 if target < 0.01 else 1)
        row(f"recall at {label} test FRR", lambda r, i=index: rate(recall_all(r["at_test_frr"][i]), "lower95")
            if i < len(r["at_test_frr"]) else "-")
        for defect in _union(r["data"]["test_nok"] for r in results):
            row(f"  {defect}", lambda r, i=index, d=defect: pct(r["at_test_frr"][i]["recall"].get(d, {}).get("rate"))
                if i < len(r["at_test_frr"]) else "-")
    row("pixel AUROC", lambda r: num((r.get("pixel") or {}).get("auroc")))
    row("AUPRO (30 % FPR)", lambda r: num((r.get("pixel") or {}).get("aupro")))
    row("cycle p50 / p99", lambda r: _ms(r["cycle_ms"]))
    for name in _union([row["name"] for row in (r.get("robustness") or {}).get("rows", [])] for r in results):
        row(f"FRR {name}", lambda r, n=name: next((short(x["frr"]) for x in (r.get("robustness") or {}).get("rows", [])
                                                  if x["name"] == n), "-"))
    row("synthetic recall at 1 % test FRR", lambda r: _synthetic_recall(r))
    settings = [flatten(r["recipe"]["settings"]) for r in results]
    for key in _union(settings):
        values = [str(s.get(key, "-")) for s in settings]
        if len(set(values)) > 1:  # only the settings that differ
            rows.append([f"`{key}`"] + values)
    return "\n".join(table(header, rows))


def _targets(results: list[dict[str, Any]]) -> list[float]:
    return [risk["target_frr"] for risk in max((r["at_test_frr"] for r in results), key=len)]


def _union(groups: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return list(seen)


def _synthetic_recall(result: dict[str, Any]) -> str:
    synthetic = result.get("synthetic")
    if not synthetic or "rows" not in synthetic:
        return "-"
    row = next((r for r in synthetic["rows"] if r["threshold_name"].startswith("test FRR 1 ")), None)
    if row is None:
        return "-"
    return f"{pct(row['recall'].get('synthetic', {}).get('rate'))} (real {pct(row['recall'].get('real', {}).get('rate'))})"
