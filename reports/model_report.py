"""A model's evaluation as one self-contained HTML page with inline SVG charts.

What it shows: the model's registry record (id, status, training window, data hash, code version),
its out-of-sample scores (``ml.evaluate.evaluate_probabilities``), a reliability diagram (predicted
probability against observed frequency per bin, the diagonal for reference, point size by count),
the equity curve of its signal P&L after costs, and the latest drift check per feature.

Like the compliance summary of :mod:`reports.exports` (whose escaping, table and CSS helpers it
reuses), the page loads nothing and runs no script: it opens offline and cannot run injected
content. The charts are drawn by :class:`Svg`, a few lines over SVG elements, so the report needs
no plotting library.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from reports.exports import _CSS, _atomic_write, _e, _table, iso_utc


@dataclass
class Svg:
    """A tiny SVG canvas in data coordinates: a plot area with margins, axes and ticks.

    Parameters
    ----------
    width, height
        Pixels.
    x_range, y_range
        Data ranges mapped to the plot area.
    margin
        Pixels left for tick labels (left, bottom) and air (right, top).
    """

    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    margin: int = 44
    parts: list[str] = field(default_factory=list)

    def x(self, v: float) -> float:
        """Pixel column of data value ``v``."""
        lo, hi = self.x_range
        return self.margin + (v - lo) / ((hi - lo) or 1.0) * (self.width - 1.5 * self.margin)

    def y(self, v: float) -> float:
        """Pixel row of data value ``v`` (SVG rows grow downwards)."""
        lo, hi = self.y_range
        return self.height - self.margin - (v - lo) / ((hi - lo) or 1.0) * (self.height - 1.5 * self.margin)

    def polyline(self, xs: Sequence[float], ys: Sequence[float], stroke: str = "#1f5fa8", width: float = 1.5,
                 dash: str | None = None) -> None:
        """A line through the points."""
        points = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in zip(xs, ys, strict=True))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline fill="none" stroke="{stroke}" stroke-width="{width}"{dash_attr} points="{points}"/>')

    def circle(self, x: float, y: float, r: float, fill: str = "#1f5fa8", title: str | None = None) -> None:
        """A dot, with a hover title."""
        tip = f"<title>{html.escape(title)}</title>" if title else ""
        self.parts.append(f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="{r:.1f}" fill="{fill}">{tip}</circle>')

    def text(self, px: float, py: float, s: str, anchor: str = "middle", size: int = 11) -> None:
        """Text at pixel coordinates."""
        self.parts.append(f'<text x="{px:.1f}" y="{py:.1f}" font-size="{size}" text-anchor="{anchor}">'
                          f"{html.escape(s)}</text>")

    def axes(self, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str,
             fmt: str = "{:g}") -> None:
        """Frame, ticks with labels, and axis titles."""
        x0, x1 = self.x(self.x_range[0]), self.x(self.x_range[1])
        y0, y1 = self.y(self.y_range[0]), self.y(self.y_range[1])
        self.parts.append(f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{x1 - x0:.1f}" height="{y0 - y1:.1f}" '
                          'fill="none" stroke="#888"/>')
        for t in x_ticks:
            self.parts.append(f'<line x1="{self.x(t):.1f}" x2="{self.x(t):.1f}" y1="{y0:.1f}" y2="{y0 + 4:.1f}" stroke="#888"/>')
            self.text(self.x(t), y0 + 16, fmt.format(t))
        for t in y_ticks:
            self.parts.append(f'<line x1="{x0 - 4:.1f}" x2="{x0:.1f}" y1="{self.y(t):.1f}" y2="{self.y(t):.1f}" stroke="#888"/>')
            self.text(x0 - 6, self.y(t) + 4, fmt.format(t), anchor="end")
        self.text((x0 + x1) / 2, self.height - 6, x_label)
        self.parts.append(f'<text x="12" y="{(y0 + y1) / 2:.1f}" font-size="11" text-anchor="middle" '
                          f'transform="rotate(-90 12 {(y0 + y1) / 2:.1f})">{html.escape(y_label)}</text>')

    def render(self, title: str) -> str:
        """The ``<svg>`` element (with an accessible title)."""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img"><title>{html.escape(title)}</title>'
                + "".join(self.parts) + "</svg>")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int(math.floor((hi - start) / step)) + 1)]


def reliability_svg(calibration: Sequence[Mapping[str, Any]], width: int = 360, height: int = 320) -> str:
    """Reliability diagram: observed frequency against mean predicted probability per bin.

    Parameters
    ----------
    calibration
        Rows with ``mean_p``, ``frac_pos`` and ``count`` (``ml.evaluate.calibration_table`` as dicts).
    """
    svg = Svg(width, height, (0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    svg.axes(ticks, ticks, "predicted probability", "observed frequency")
    svg.polyline([0.0, 1.0], [0.0, 1.0], stroke="#999", width=1.0, dash="4 3")
    filled = [b for b in calibration if b.get("count")]
    if filled:
        biggest = max(b["count"] for b in filled)
        svg.polyline([b["mean_p"] for b in filled], [b["frac_pos"] for b in filled])
        for b in filled:
            svg.circle(b["mean_p"], b["frac_pos"], 2.5 + 4.0 * math.sqrt(b["count"] / biggest),
                       title=f"{b['count']} predictions, mean p {b['mean_p']:.3f}, observed {b['frac_pos']:.3f}")
    return svg.render("Reliability diagram")


def equity_svg(equity: Sequence[float], width: int = 640, height: int = 280) -> str:
    """Equity curve: cumulative signal P&L after costs, trade by trade (starting at 0)."""
    values = [0.0, *[float(v) for v in equity]]
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.05 * (hi - lo)
    svg = Svg(width, height, (0.0, float(len(values) - 1) or 1.0), (lo - pad, hi + pad), margin=56)
    svg.axes(nice_ticks(0.0, float(len(values) - 1)), nice_ticks(lo - pad, hi + pad), "trade", "cumulative P&L")
    svg.polyline([0.0, float(len(values) - 1)], [0.0, 0.0], stroke="#bbb", width=1.0, dash="4 3")
    svg.polyline(list(range(len(values))), values, stroke="#06612e" if values[-1] >= 0 else "#a40000")
    return svg.render("Equity curve of the signal P&L after costs")


def _as_mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else asdict(value)
    return dict(value)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def _record_rows(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key in ("model_id", "status", "feature_set_version", "code_version", "data_sha256"):
        if key in record:
            rows.append((key, record[key]))
    for key in ("created_ns", "train_start_ns", "train_end_ns", "expires_ns"):
        if record.get(key) is not None:
            rows.append((key.removesuffix("_ns") + " (UTC)", iso_utc(record[key])))
    if "feature_names" in record:
        rows.append(("features", f"{len(record['feature_names'])}: " + ", ".join(record["feature_names"])))
    if record.get("label_config"):
        rows.append(("label", ", ".join(f"{k}={v}" for k, v in sorted(record["label_config"].items()))))
    return rows


def _drift_section(drift: Mapping[str, Any]) -> str:
    if not drift:
        return '<p class="muted">no drift check supplied</p>'
    alert = bool(drift.get("alert"))
    head = (f'<p>Window of {drift.get("n_rows")} rows: <span class="{"fail" if alert else "ok"}">'
            f'{"DRIFT ALERT" if alert else "no alert"}</span>, {drift.get("n_drifted")} features drifted '
            f'(alert at {drift.get("needed")}).</p>')
    rows = [(f["feature"], _fmt(f["psi"]), _fmt(f["psi_limit"]), _fmt(f["wasserstein_norm"]),
             _fmt(f["wasserstein_limit"]), _fmt(f["ks_stat"]), _fmt(f["ks_p"]), "yes" if f["drifted"] else "")
            for f in drift.get("features", [])]
    return head + _table(("feature", "PSI", "PSI limit", "Wasserstein / std", "limit", "KS D", "KS p (effective n)",
                          "drifted"), rows, numeric=(1, 2, 3, 4, 5, 6),
                         row_class=lambda row: "BREACH" if row[7] else None)


def render_model_report(record: Any, evaluation: Any, calibration: Sequence[Mapping[str, Any]] | None = None,
                        equity: Sequence[float] | None = None, drift: Any = None, *,
                        generated_at: dt.datetime | None = None) -> str:
    """The model's evaluation page.

    Parameters
    ----------
    record
        ``ml.registry.ModelRecord`` (or its ``model.json`` as a mapping), or just a mapping of
        metrics when the model is not registered yet.
    evaluation
        ``ml.evaluate.EvaluationReport`` or its ``to_dict()``: ``scores`` (with ``calibration``),
        trade figures and ``equity``.
    calibration
        Reliability table rows (``mean_p``, ``frac_pos``, ``count``, ``lo``, ``hi``); None takes
        ``evaluation["scores"]["calibration"]``.
    equity
        Cumulative P&L per trade; None takes ``evaluation["equity"]``.
    drift
        ``ml.drift.DriftReport`` or its ``to_dict()``; None shows "no drift check supplied".
    generated_at
        Time printed on the page; now when None.

    Returns
    -------
    str
        The HTML page; every value from the arguments is escaped.
    """
    rec = record.to_json() if hasattr(record, "to_json") else _as_mapping(record)
    ev = _as_mapping(evaluation)
    scores = dict(ev.get("scores", {}))
    from_scores = scores.pop("calibration", [])
    calibration = list(from_scores if calibration is None else calibration)
    equity = list(ev.get("equity", []) if equity is None else equity)
    dr = _as_mapping(drift)
    when = (generated_at or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    title = f"Model report {rec.get('model_id', '(unregistered)')}"
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><p>Generated {_e(when.strftime('%Y-%m-%dT%H:%M:%SZ'))}.</p>",
        "<h2>Model</h2>",
        _table(("field", "value"), _record_rows(rec)) if _record_rows(rec) else '<p class="muted">not registered</p>',
        "<h2>Out-of-sample scores</h2>",
        _table(("score", "value"), [(k, _fmt(v)) for k, v in scores.items()], numeric=(1,)),
        "<h2>Calibration</h2>", reliability_svg(calibration),
        _table(("bin", "count", "mean predicted", "observed"),
               [(f"{b['lo']:.1f}-{b['hi']:.1f}", b["count"], _fmt(b["mean_p"]), _fmt(b["frac_pos"])) for b in calibration],
               numeric=(1, 2, 3)),
        "<h2>Signal P&amp;L after costs</h2>",
        _table(("measure", "value"), [(k, _fmt(ev[k])) for k in ("n_trades", "pnl_total", "pnl_per_trade", "hit_rate",
                                                                 "sharpe_per_trade", "deflated_sharpe", "n_trials",
                                                                 "threshold", "cost_per_trade") if k in ev],
               numeric=(1,)),
        equity_svg(equity),
        "<h2>Drift</h2>", _drift_section(dr),
        '<p class="note">Produced by nt8bridge from out-of-sample predictions; a model\'s past scores do not '
        "promise its future ones.</p></body></html>\n",
    ]
    return "".join(parts)


def write_model_report(page: str, path: Path) -> Path:
    """Write a page from :func:`render_model_report` (UTF-8; the file appears only once complete)."""
    return _atomic_write(Path(path), lambda p: p.write_text(page, encoding="utf-8", newline="\n"))
