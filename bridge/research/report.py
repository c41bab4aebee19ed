"""The files of a walk-forward study: ``report.html`` (one self-contained page, charts as inline SVG: nothing to
install, nothing fetched), ``optimize.json`` (every number) and ``oos_returns.csv`` (``date,return``, the stitched
out-of-sample daily returns, as quantstats and empyrical read them with ``pandas.read_csv(index_col=0,
parse_dates=True)``)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["dsr_reading", "pbo_reading", "stability", "write_outputs"]


# --------------------------------------------------------------------------- parameter stability


def _marginal(summary: dict[str, Any], keys: list[str]) -> tuple[list[list[Any]], np.ndarray, np.ndarray]:
    """Mean training Sharpe ratio and times chosen per combination of ``keys``' values (averaged over the windows
    and the other keys; undefined ratios left out)."""
    grid_keys = summary["grid"]["keys"]
    values = [summary["grid"]["values"][grid_keys.index(k)] for k in keys]
    shape = tuple(len(v) for v in values)
    total, count, chosen = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for w in summary["windows"]:
        for n, sharpe in enumerate(w["train_sharpe"]):
            cell = tuple(values[d].index(summary["param_sets"][n][k]) for d, k in enumerate(keys))
            if sharpe is not None:
                total[cell] += sharpe
                count[cell] += 1
            chosen[cell] += n == w["chosen"]
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
    return values, mean, chosen


def stability(summary: dict[str, Any]) -> dict[str, Any]:
    """What the heat maps show: the two searched keys whose values move the mean training Sharpe ratio most (in
    grid order when there are just two), or the one there is; per cell the mean training Sharpe ratio over the
    windows and how often the cell was chosen. A stable optimum is a region, not a lone cell."""
    keys = [k for k, v in zip(summary["grid"]["keys"], summary["grid"]["values"]) if len(v) > 1]
    if not keys:
        return {"keys": [], "values": [], "mean_train_sharpe": [], "chosen": []}
    if len(keys) > 2:
        spread = []
        for k in keys:
            _, mean, _ = _marginal(summary, [k])
            finite = mean[np.isfinite(mean)]
            spread.append(float(np.var(finite)) if finite.size else 0.0)
        top = sorted(range(len(keys)), key=lambda i: (-spread[i], i))[:2]
        keys = [keys[i] for i in sorted(top)]
    values, mean, chosen = _marginal(summary, keys)
    return {"keys": keys, "values": values,
            "mean_train_sharpe": [[None if not math.isfinite(x) else round(float(x), 6) for x in row]
                                  for row in np.atleast_2d(mean)],
            "chosen": np.atleast_2d(chosen).astype(int).tolist()}


# --------------------------------------------------------------------------- readings


def dsr_reading(dsr: dict[str, Any]) -> str:
    v = dsr.get("value")
    if v is None:
        return "not defined: the out-of-sample returns have fewer than two days or no variation (no trades)."
    verdict = ("significant at 5%" if v >= 0.95 else "not significant at 5%")
    return (f"{v:.2f} is the probability that the out-of-sample Sharpe ratio beats the best that {dsr['trials']} "
            f"trials of no skill would show, given its {dsr['observations']} days, skew and kurtosis: {verdict}.")


def pbo_reading(pbo: dict[str, Any]) -> str:
    v = pbo.get("value")
    if v is None:
        return "not defined: it needs at least two parameter sets and four days."
    verdict = ("the selection is no better than chance: likely overfit" if v >= 0.5 else
               "the in-sample best mostly stays above the median out of sample" if v <= 0.2 else
               "the in-sample best often falls to the bottom half out of sample")
    return (f"{v:.2f}: in {v:.0%} of {pbo['combinations']} in-sample/out-of-sample splits ({pbo['blocks']} blocks) "
            f"the in-sample best set ranked in the bottom half out of sample; {verdict}.")


# --------------------------------------------------------------------------- SVG


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return html.escape(str(x))


def _equity_svg(returns: pd.Series, equity: float, boundaries: list[str], width: int = 860, height: int = 260) -> str:
    if returns.empty:
        return "<p>No out-of-sample days.</p>"
    curve = equity * np.cumprod(1 + returns.to_numpy())
    values = np.concatenate(([equity], curve))
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    pad = 50
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / max(1, n - 1))
        y = height - pad + (v - lo) / (hi - lo) * (2 * pad - height)
        return x, y

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(values)))
    days = [d.strftime("%Y-%m-%d") for d in returns.index]
    marks = []
    for b in boundaries:  # where each test window starts
        i = next((k for k, d in enumerate(days) if d >= b[:10]), None)
        if i is not None:
            x, _ = xy(i, lo)
            marks.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" class="mark"/>')
    base_y = xy(0, equity)[1]
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="out-of-sample equity">'
            + "".join(marks)
            + f'<line x1="{pad}" y1="{base_y:.1f}" x2="{width - pad}" y2="{base_y:.1f}" class="base"/>'
            f'<polyline points="{points}" class="curve"/>'
            f'<text x="{pad}" y="{pad - 10}">{hi:,.0f}</text><text x="{pad}" y="{height - pad + 18}">{lo:,.0f}</text>'
            f'<text x="{pad}" y="{height - 8}">{days[0]}</text>'
            f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">{days[-1]}</text></svg>')


def _colour(x: float | None, lo: float, hi: float, diverging: bool) -> str:
    if x is None or not math.isfinite(x):
        return "#eeeeee"
    if diverging:  # red below zero, green above, white at zero
        m = max(abs(lo), abs(hi)) or 1.0
        t = max(-1.0, min(1.0, x / m))
        r, g, b = (255, int(255 * (1 + t)), int(255 * (1 + t))) if t < 0 else (int(255 * (1 - t)), 255 - int(80 * t),
                                                                              int(255 * (1 - t)))
    else:  # white to blue
        t = 0.0 if hi <= lo else (x - lo) / (hi - lo)
        r, g, b = int(255 - 200 * t), int(255 - 150 * t), 255
    return f"rgb({r},{g},{b})"


def _heatmap_svg(title: str, rows: list[Any], cols: list[Any], cells: list[list[Any]], row_key: str, col_key: str,
                 diverging: bool) -> str:
    cw, ch, left, top = 90, 34, 110, 74
    finite = [c for row in cells for c in row if c is not None and math.isfinite(c)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    width = max(left + cw * len(cols) + 10, 7 * max(len(title), len(col_key) + 2, len(row_key) + 2))
    height = top + ch * len(rows) + 10
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="heatmap" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="0" y="14" class="title">{html.escape(title)}</text>',
             f'<text x="{left}" y="32">{html.escape(col_key)} &#8594;</text>',
             f'<text x="0" y="50">{html.escape(row_key)}{" &#8595;" if row_key else ""}</text>']
    for j, c in enumerate(cols):
        parts.append(f'<text x="{left + j * cw + cw / 2}" y="{top - 6}" text-anchor="middle">{_fmt(c)}</text>')
    for i, r in enumerate(rows):
        y = top + i * ch
        parts.append(f'<text x="{left - 8}" y="{y + ch / 2 + 4}" text-anchor="end">{_fmt(r)}</text>')
        for j, v in enumerate(cells[i]):
            x = left + j * cw
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" '
                         f'fill="{_colour(v, lo, hi, diverging)}"><title>{_fmt(v)}</title></rect>'
                         f'<text x="{x + cw / 2}" y="{y + ch / 2 + 4}" text-anchor="middle">'
                         f'{_fmt(v) if diverging else int(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stability_html(stab: dict[str, Any]) -> str:
    keys = stab["keys"]
    if not keys:
        return "<p>The grid has one parameter set: nothing to compare.</p>"
    if len(keys) == 1:  # a strip: one row of cells
        values = stab["values"][0]
        return (_heatmap_svg("Mean training Sharpe ratio (annualised), over the windows", [""], values,
                             [list(stab["mean_train_sharpe"][0])], "", keys[0], True)
                + _heatmap_svg("Windows that chose each value", [""], values, [list(stab["chosen"][0])], "", keys[0],
                               False))
    rows, cols = stab["values"]
    return (_heatmap_svg("Mean training Sharpe ratio (annualised), over the windows", rows, cols,
                         stab["mean_train_sharpe"], keys[0], keys[1], True)
            + _heatmap_svg("Windows that chose each cell", rows, cols, stab["chosen"], keys[0], keys[1], False))


def _when(text: str) -> str:
    """``2023-10-16T00:00:00Z`` as ``2023-10-16``, any other time as ``2023-10-16 13:30``."""
    return text[:10] if text[10:19] == "T00:00:00" else f"{text[:10]} {text[11:16]}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items())


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}td.d{white-space:nowrap;text-align:left}svg text{font-size:12px;fill:#333}svg .title{font-weight:bold}
.curve{fill:none;stroke:#1f5fbf;stroke-width:2}.base{stroke:#999;stroke-dasharray:4 3}.mark{stroke:#ddd}
.stat{font-size:1.1em;margin:.4em 0}.heatmap{margin-right:2em}"""


def render_html(summary: dict[str, Any], returns: pd.Series) -> str:
    s = summary
    rows = []
    for w in s["windows"]:
        t = w["test"]
        chosen_sharpe = w["train_sharpe"][w["chosen"]]
        rows.append(f"<tr><td>{w['index']}</td><td class=d>{_when(w['train_from'])} .. {_when(w['train_to'])}</td>"
                    f"<td class=d>{_when(w['test_from'])} .. {_when(w['test_to'])}</td>"
                    f"<td class=l>{html.escape(_params_text(w['chosen_params']))}</td><td>{_fmt(chosen_sharpe)}</td>"
                    f"<td>{t['trades']}</td><td>{_fmt(t['net_pnl'])}</td><td>{_fmt(t['return'] * 100, 3)}%</td>"
                    f"<td>{_fmt(t['sharpe'])}</td></tr>")
    chosen_counts = [sum(1 for w in s["windows"] if w["chosen"] == n) for n in range(len(s["param_sets"]))]
    sets = "".join(f"<tr><td>{n}</td><td class=l>{html.escape(_params_text(p))}</td>"
                   f"<td>{_fmt(s['full_period']['sharpe'][n])}</td><td>{_fmt(s['full_period']['net_pnl'][n])}</td>"
                   f"<td>{s['full_period']['trades'][n]}</td><td>{chosen_counts[n]}</td></tr>"
                   for n, p in enumerate(s["param_sets"]))
    oos = s["oos"]
    timing = s["timing"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Walk-forward: {html.escape(s['strategy'])}</title>
<style>{_STYLE}</style></head><body>
<h1>Walk-forward optimisation: {html.escape(s['strategy'])}</h1>
<p>{html.escape(', '.join(s['instruments']))}; {_when(s['span']['from'])} .. {_when(s['span']['to'])}; training {s['train']},
test {s['test']}, {'anchored' if s['anchored'] else 'rolling'}; {len(s['windows'])} windows x {len(s['param_sets'])}
parameter sets; {timing['tasks']} runs on {html.escape(timing['executor'])} in {_fmt(timing['elapsed_s'], 1)} s.</p>
<h2>Out of sample</h2>
<p class=stat>{oos['days']} days, {oos['trades']} trades, net {_fmt(oos['net_pnl'])} ({_fmt(oos['return'] * 100, 3)}% of
{_fmt(s['equity'], 0)}), Sharpe ratio {_fmt(oos['sharpe'])} (annualised), max drawdown
{_fmt((oos['max_drawdown'] or 0) * 100, 3)}%.</p>
<p class=stat><b>Deflated Sharpe ratio</b>: {html.escape(dsr_reading(s['dsr']))}</p>
<p class=stat><b>Probability of backtest overfitting</b>: {html.escape(pbo_reading(s['pbo']))}</p>
<h3>Equity of the stitched test windows (grey lines: a window starts)</h3>
{_equity_svg(returns, s['equity'], [w['test_from'] for w in s['windows']])}
<h2>Windows</h2>
<p>Each window runs from its first time up to, not including, its last (UTC).</p>
<table><tr><th>#</th><th class=l>training</th><th class=l>test</th><th class=l>chosen</th><th>train Sharpe</th>
<th>test trades</th><th>test net</th><th>test return</th><th>test Sharpe</th></tr>{''.join(rows)}</table>
<h2>Parameter stability</h2>
{_stability_html(s['stability'])}
<h2>Parameter sets over the whole span</h2>
<table><tr><th>#</th><th class=l>parameters</th><th>Sharpe</th><th>net</th><th>trades</th><th>windows chosen</th></tr>
{sets}</table>
<p>Sharpe ratios from daily returns of realised equity, 252 days a year; one account of {_fmt(s['equity'], 0)} for
every run. Numbers: optimize.json; daily returns: oos_returns.csv.</p>
</body></html>
"""


def write_outputs(summary: dict[str, Any], returns: pd.Series, out_dir: str | Path) -> dict[str, Path]:
    """Write the three files into ``out_dir`` (created); the summary gains its ``stability`` block."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary["stability"] = stability(summary)
    paths = {"report": out / "report.html", "json": out / "optimize.json", "csv": out / "oos_returns.csv"}
    paths["json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    frame = pd.DataFrame({"date": [d.strftime("%Y-%m-%d") for d in returns.index], "return": returns.to_numpy()})
    frame.to_csv(paths["csv"], index=False, float_format="%.10g", lineterminator="\n")
    paths["report"].write_text(render_html(summary, returns), encoding="utf-8")
    return paths
