"""Evaluate the seed papers' claims (results/claims.toml) on the committed results and write the claims table.

For each claim and protocol: the mean of each side over its seeds, the difference in the claim's direction
(positive = the claim's side is better), the per-seed signs where both sides ran the same seeds, and a verdict:
**holds** when the difference exceeds two standard errors of the difference, **reversed** when it is below minus
two, **within noise** otherwise (the standard error is that of the per-seed paired differences when both
sides have the same seeds, else the unpaired one); **one seed** when a side has a single seed (no error
estimate); **no results** when a side was not run. Writes ``results/claims.md`` and replaces the table between
the ``<!-- claims:begin -->`` / ``<!-- claims:end -->`` markers of README.md.

    hatch run claims            # evaluate, write results/claims.md and the README table
    hatch run claims --check    # exit 1 if the README table is not what the results give
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"


def load_side(results: Path, protocol: str, label: str, metric: str) -> dict[int, float]:
    """Seed → value of ``metric`` for ``label`` over the folders of ``protocol`` (joined with "+")."""
    values: dict[int, float] = {}
    for folder in protocol.split("+"):
        path = results / folder / "summary.json"
        if not path.is_file():
            continue
        group = json.loads(path.read_text()).get(label)
        if group and metric in group:
            values.update(zip(group["seeds"], group[metric]["values"]))
    return values


def verdict(a: dict[int, float], b: dict[int, float], sign: float) -> dict:
    """The comparison of two sides (``sign`` = +1 when higher is better, −1 when lower is)."""
    if not a or not b:
        return {"verdict": "no results"}
    diff = sign * (statistics.fmean(a.values()) - statistics.fmean(b.values()))
    out = {"diff": diff, "mean_a": statistics.fmean(a.values()), "mean_b": statistics.fmean(b.values()),
           "seeds_a": sorted(a), "seeds_b": sorted(b)}
    common = sorted(set(a) & set(b))
    if common:
        out["signs"] = "".join("+" if sign * (a[s] - b[s]) > 0 else ("−" if sign * (a[s] - b[s]) < 0 else "0")
                               for s in common)
    if len(a) < 2 or len(b) < 2:
        out["verdict"] = "one seed"
        return out
    if common == sorted(a) == sorted(b):
        paired = [sign * (a[s] - b[s]) for s in common]
        se = statistics.stdev(paired) / math.sqrt(len(paired))
    else:
        se = math.sqrt(statistics.variance(a.values()) / len(a) + statistics.variance(b.values()) / len(b))
    out["noise"] = 2 * se
    out["verdict"] = "holds" if diff > 2 * se else ("reversed" if diff < -2 * se else "within noise")
    return out


def claim_pairs(claim: dict) -> list[tuple[str, str]]:
    """The (protocol of a, protocol of b) pairs a claim is checked on.

    ``protocols = [...]``: both sides on each protocol; ``protocol_a`` / ``protocol_b``: one cross-protocol pair;
    ``pairs = [[a, b], ...]``: several (e.g. an ablation's folder against its method's, on each protocol).
    """
    pairs = [(p, p) for p in claim.get("protocols", [])]
    if "protocol_a" in claim:
        pairs.append((claim["protocol_a"], claim["protocol_b"]))
    pairs += [(pa, pb) for pa, pb in claim.get("pairs", [])]
    if not pairs:
        raise SystemExit(f"claim {claim.get('id')!r} names no protocol (protocols, protocol_a/_b or pairs)")
    return pairs


def evaluate(claims: list[dict], results: Path) -> list[dict]:
    rows = []
    for claim in claims:
        sign = 1.0 if claim.get("better", "higher") == "higher" else -1.0
        pairs = claim_pairs(claim)
        for pa, pb in pairs:
            a = load_side(results, pa, claim["a"], claim["metric"])
            b = load_side(results, pb, claim["b"], claim["metric"])
            rows.append({"claim": claim, "protocol": pa if pa == pb else f"{pa} vs {pb}", **verdict(a, b, sign)})
    return rows


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| claim | source (paper's numbers) | protocol | ours: a vs b | difference (± 2 s.e.) | per-seed signs | "
             "verdict |", "|---|---|---|---|---:|:---:|---|"]
    for r in rows:
        c = r["claim"]
        paper = c["paper"] + (f": {c['paper_a']:.2f} vs {c['paper_b']:.2f}" if "paper_a" in c else "")
        ours = f"{_num(r.get('mean_a'))} vs {_num(r.get('mean_b'))}" if "mean_a" in r else "—"
        diff = (f"{r['diff']:+.2f}" + (f" (± {r['noise']:.2f})" if "noise" in r else "")) if "diff" in r else "—"
        metric = "" if c["metric"] == "avg_inc_acc" else f" [{c['metric'].replace('_', ' ')}, {c['better']} is better]"
        lines.append(f"| {c['statement']}{metric} | {paper} | {r['protocol']} | {ours} | {diff} | "
                     f"{r.get('signs', '—')} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--claims", type=Path, default=ROOT / "results" / "claims.toml")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--check", action="store_true", help="only check that the README table is up to date")
    args = p.parse_args(argv)
    claims = tomllib.loads(args.claims.read_text())["claim"]
    table = markdown(evaluate(claims, args.results))
    readme = args.readme.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"{args.readme} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{table}{END}{tail}"
    if args.check:
        if updated != readme:
            print("the README's claims table is out of date: run `hatch run claims`", file=sys.stderr)
            return 1
        print("the README's claims table is up to date")
        return 0
    (args.results / "claims.md").write_text("# Claims of the seed papers, checked on our protocols\n\n"
                                            "Generated by `hatch run claims` from `results/claims.toml`.\n\n" + table)
    args.readme.write_text(updated)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
