"""One self-contained HTML file from a :class:`~engine.report.Report`: no network to view it.

The document has three parts:

* the summary, rendered here (every text escaped): photos searched, reused and failed by
  reason, calls spent, the run's duration, and the quota chart as inline SVG;
* the photos, as one JSON payload in a ``<script type="application/json">`` block (each
  distinct offer image once, in a list the offers index), from which the inline script
  renders cards 100 at a time (:data:`PAGE`) with the DOM API and ``textContent`` only:
  thousands of photos never become thousands of live elements and decoded images at once, as
  they would with every card in the markup (``loading=lazy`` does not defer a ``data:`` URI:
  its bytes are in the document, and it is decoded when parsed);
* the filters (verdict, price range, failed only), plain inline JavaScript: a card that does not
  match gets the ``hidden`` attribute. They follow the URL fragment, which they also write:
  ``#failed&verdict=match&price=10-20``; ``#check`` adds, once the page has loaded, a
  ``<pre id="report-check">`` with how many of its images decoded (used by the tests).

A Content-Security-Policy allows only ``data:`` images and the page's own style and script
(by hash): even a title that slipped past escaping could neither run a script nor load
anything. The offers' images come from the image cache as ``data:`` URIs, never from their
URLs (linked, not loaded): the report fetches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.report import OfferLine, PhotoCard, QuotaUse, Report

PAGE = 100
"""Cards rendered at a time."""
_CHART_WIDTH = 760
_CHART_HEIGHT = 170
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 44, 12, 14, 26
PLACEHOLDER = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">'
    b'<rect width="96" height="96" fill="#eceff3"/><path d="M28 64l14-18 10 12 8-9 10 15z"'
    b' fill="#b8c0cc"/><circle cx="60" cy="36" r="6" fill="#b8c0cc"/></svg>'
).decode("ascii")
"""What stands in for a photo that has no thumbnail."""

_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def render_report(report: Report) -> str:
    """The whole HTML document of ``report``."""
    payload = _script_json(_payload(report))
    style = _STYLE
    script = _SCRIPT.replace("__PAGE__", str(PAGE))
    policy = (
        "default-src 'none'; img-src data:; base-uri 'none'; form-action 'none';"
        f" style-src '{_sha256(style)}'; script-src '{_sha256(script)}'"
    )
    run = report.run
    title = f"img1688 report: {run.job or 'run'} {run.run_id}"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"{_header(report)}\n{_summary(report)}\n{_CONTROLS}\n"
        '<main id="cards" aria-live="polite"></main>\n'
        '<p class="more"><button type="button" id="more" hidden></button></p>\n'
        "<noscript><p>The photos are drawn by the page's script: allow JavaScript to see them."
        "</p></noscript>\n"
        f'<script type="application/json" id="report-data">{payload}</script>\n'
        f"<script>{script}</script>\n</body></html>\n"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _script_json(value: object) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>``, ``<!--`` or line separator can
    end or bend the block, whatever the strings hold."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_JSON_ESCAPES)


# -- the photos' payload ------------------------------------------------------------------


def _payload(report: Report) -> dict[str, object]:
    """The photos as the script reads them: short keys, absent values left out (a run of
    thousands of photos pays for every byte)."""
    shas = sorted(report.offer_images)
    index = {sha: n for n, sha in enumerate(shas)}  # offers name their image by position
    return {
        "top": report.top,
        "columns": sorted(report.columns),
        "placeholder": PLACEHOLDER,
        "images": [_data_uri(report.offer_images[sha]) for sha in shas],
        "photos": [_photo(photo, index) for photo in report.photos],
    }


def _data_uri(jpeg: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}"


def _photo(photo: PhotoCard, images: Mapping[str, int]) -> dict[str, object]:
    thumb = photo.thumbnail
    fields: dict[str, object] = {
        "path": photo.path,
        "status": photo.status,
        "reason": photo.failure_reason,
        "message": photo.failure_message,
        "sku": photo.sku,
        "title": photo.title,
        "reused": photo.reused or None,
        "calls": photo.calls or None,
        "received": photo.offers_received,
        "kept": photo.offers_kept,
        "removed": [list(pair) for pair in photo.removed] or None,
        "thumb": _data_uri(thumb.jpeg) if thumb.jpeg else None,
        "note": thumb.note,
        "offers": [_offer(offer, images) for offer in photo.offers] or None,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _offer(offer: OfferLine, images: Mapping[str, int]) -> dict[str, object]:
    fields: dict[str, object] = {
        "rank": offer.rank,
        "title": offer.title,
        "title_en": offer.title_en,
        "lo": money(offer.price_min),
        "hi": money(offer.price_max),
        "tiers": [[qty, money(price)] for qty, price in offer.tiers] or None,
        "moq": offer.min_order,
        "unit": offer.unit,
        "city": offer.city or offer.province,
        "supplier": offer.company,
        "similarity": offer.similarity,
        "verdict": offer.verdict,
        "score": offer.visual_score,
        "url": offer.offer_url,
        "image": offer.image_url,
        "img": images.get(offer.image_sha256) if offer.image_sha256 else None,
    }
    return {key: value for key, value in fields.items() if value is not None}


def money(value: Decimal | None) -> str | None:
    """A CNY amount with at least 2 and at most 4 decimals (``12.50``, ``0.035``)."""
    if value is None:
        return None
    whole, _, fraction = f"{value:.4f}".rstrip("0").partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


# -- the summary --------------------------------------------------------------------------


def _header(report: Report) -> str:
    run = report.run
    state = "complete" if run.completed_at else "unfinished"
    job = f"job <b>{_e(run.job)}</b> · " if run.job else ""
    return (
        '<header><h1>Catalogue matching report</h1><p class="sub">'
        f"{job}run <code>{_e(run.run_id)}</code> ({state}) · generated"
        f" {_e(_when(report.generated_at))}</p></header>"
    )


def _summary(report: Report) -> str:
    photos = report.photos
    run = report.run
    failed = Counter(p.failure_reason or "unknown" for p in photos if p.failed)
    searched = sum(1 for p in photos if p.calls > 0)
    reused = sum(1 for p in photos if p.reused)
    kept = sum(p.offers_kept or 0 for p in photos)
    if run.completed_at:
        duration, span = _duration(run.duration or 0.0), _span(run.started_at, run.completed_at)
    else:
        duration, span = "unfinished", f"started {_when(run.started_at)}"
    figures = [
        ("Photos", f"{len(photos):,}", f"{len(photos) - sum(failed.values()):,} with an answer"),
        ("Searched", f"{searched:,}", "sent to the gateway in this run"),
        ("Reused", f"{reused:,}", "answered from a stored answer, no call"),
        ("Failed", f"{sum(failed.values()):,}", "see below" if failed else "none"),
        ("Offers kept", f"{kept:,}", f"the best {report.top} of each photo shown"),
        ("Calls spent", f"{run.calls:,}", _rate_line(report.quota)),
        ("Duration", duration, span),
    ]
    cells = "".join(
        f'<div class="figure{" bad" if name == "Failed" and failed else ""}">'
        f'<span class="label">{_e(name)}</span><span class="value">{_e(value)}</span>'
        f'<span class="hint">{_e(hint)}</span></div>'
        for name, value, hint in figures
    )
    return (
        f'<section id="summary"><div class="figures">{cells}</div>'
        f'<div class="charts">{_failures(failed)}{_chart(report.quota)}</div></section>'
    )


def _failures(failed: Counter[str]) -> str:
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(reason)}</code></td><td>{count:,}</td></tr>"
        for reason, count in sorted(failed.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        '<table class="failures"><caption>Failed photos by reason'
        ' (<a href="#failed">show them</a>)</caption>'
        f"<thead><tr><th>reason</th><th>photos</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _rate_line(quota: QuotaUse) -> str:
    if quota.rate is None:
        return "rate unknown (no manifest of this run)"
    return f"rate {quota.rate.text}"


def _chart(quota: QuotaUse) -> str:
    """Calls per window as SVG bars, the limit as a dashed line."""
    if quota.start is None:
        return (
            '<figure class="quota"><figcaption>Quota use: the checkpoints hold no call times for'
            " this run (no call was made, or the run predates the call log).</figcaption></figure>"
        )
    counts = quota.counts
    busiest = max(counts)
    # A limit far above every bar (a generous rate) would flatten them all: leave it off.
    shown_limit = quota.limit if quota.limit is not None and quota.limit <= 4 * busiest else None
    top = max(busiest, shown_limit or 0, 1)
    plot_w = _CHART_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = _CHART_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    bar_w = plot_w / len(counts)
    base = _MARGIN_TOP + plot_h

    def y(value: float) -> float:
        return base - plot_h * value / top

    parts = [
        f'<line class="axis" x1="{_MARGIN_LEFT}" y1="{base}" x2="{_MARGIN_LEFT + plot_w}"'
        f' y2="{base}"/>',
        f'<text class="tick" x="{_MARGIN_LEFT - 6}" y="{base}" text-anchor="end">0</text>',
        f'<text class="tick" x="{_MARGIN_LEFT - 6}" y="{_MARGIN_TOP + 8}" text-anchor="end">'
        f"{_short(top)}</text>",
    ]
    for index, count in enumerate(counts):
        begin = quota.start + index * quota.window
        over = quota.limit is not None and count > quota.limit
        parts.append(
            f'<rect class="bar{" over" if over else ""}" x="{_MARGIN_LEFT + index * bar_w:.2f}"'
            f' y="{y(count):.2f}" width="{max(bar_w - 1, 0.5):.2f}"'
            f' height="{base - y(count):.2f}"><title>{_e(_clock(begin))}:'
            f" {count} call{'s' if count != 1 else ''}</title></rect>"
        )
    if shown_limit is not None:
        parts.append(
            f'<line class="limit" x1="{_MARGIN_LEFT}" y1="{y(shown_limit):.2f}"'
            f' x2="{_MARGIN_LEFT + plot_w}" y2="{y(shown_limit):.2f}"/>'
            f'<text class="limit-label" x="{_MARGIN_LEFT + plot_w}" y="{y(shown_limit) - 4:.2f}"'
            f' text-anchor="end">limit {shown_limit:,}</text>'
        )
    end = quota.start + len(counts) * quota.window
    parts.append(
        f'<text class="tick" x="{_MARGIN_LEFT}" y="{_CHART_HEIGHT - 8}">'
        f"{_e(_clock(quota.start))}</text>"
        f'<text class="tick" x="{_MARGIN_LEFT + plot_w}" y="{_CHART_HEIGHT - 8}"'
        f' text-anchor="end">{_e(_clock(end))}</text>'
    )
    window = _duration(quota.window)
    caption = f"Calls per {window} window, {sum(counts):,} in all"
    if quota.rate is not None:
        caption += (
            f"; the most in any {_duration(quota.rate.period)} was {quota.peak:,} of"
            f" {quota.rate.calls:,} allowed ({quota.rate.text})"
        )
    if quota.limit is not None and shown_limit is None:
        caption += f"; the limit, {quota.limit:,} per bar, is far above the chart"
    label = _e(caption)
    return (
        f'<figure class="quota"><svg xmlns="http://www.w3.org/2000/svg" role="img"'
        f' aria-label="{label}" viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}"'
        f' width="{_CHART_WIDTH}" height="{_CHART_HEIGHT}">{"".join(parts)}</svg>'
        f"<figcaption>Quota use: {label}. Times in UTC.</figcaption></figure>"
    )


def _short(count: int) -> str:
    """A tick label that fits the chart's margin: ``950``, ``12k``, ``1.5M``."""
    if count < 10_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.3g}k"
    return f"{count / 1_000_000:.3g}M"


def _when(value: datetime | str) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(started: str, completed: str) -> str:
    """``2026-01-12, 02:00:00 to 02:41:10 UTC``; both dates when they differ."""
    begin = datetime.fromisoformat(started).astimezone(UTC)
    end = datetime.fromisoformat(completed).astimezone(UTC)
    if begin.date() == end.date():
        return f"{begin:%Y-%m-%d}, {begin:%H:%M:%S} to {end:%H:%M:%S} UTC"
    return f"{_when(begin)} to {_when(end)}"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    """``45 s``, ``1 min 15 s``, ``2 h 05 min``, ``3 d 4 h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:g} s" if seconds < 10 and seconds != whole else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


# -- the page's own style, controls and script --------------------------------------------

_CONTROLS = """<form id="filters" class="filters" autocomplete="off">
<label id="verdict-filter" hidden>Verdict <select id="verdict"><option value="">any</option>\
</select></label>
<label>Price from <input id="price-lo" type="number" min="0" step="any" inputmode="decimal"\
 size="7"></label>
<label>to <input id="price-hi" type="number" min="0" step="any" inputmode="decimal" size="7">\
 CNY</label>
<label><input id="failed" type="checkbox"> failed only</label>
<button type="reset" id="clear">Clear</button>
<span id="count" class="count"></span>
</form>"""

_STYLE = """
:root{--ink:#1d2430;--dim:#5d6878;--line:#dde2e8;--bg:#f6f7f9;--bad:#b42318;--ok:#1f7a3d;
--accent:#2456c9}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1280px;padding:16px 20px 40px;font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;color:var(--ink);
background:var(--bg)}
h1{font-size:22px;margin:0 0 2px}
.sub{margin:0 0 14px;color:var(--dim)}
code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.figure{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.figure .label{display:block;color:var(--dim);font-size:12px}
.figure .value{display:block;font-size:22px;font-weight:600}
.figure .hint{display:block;color:var(--dim);font-size:12px}
.figure.bad .value{color:var(--bad)}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0 0;align-items:flex-start}
table.failures{border-collapse:collapse;background:#fff;border:1px solid var(--line)}
table.failures caption{text-align:left;font-weight:600;padding:0 0 4px;white-space:nowrap}
table.failures td,table.failures th{padding:3px 12px;border-top:1px solid var(--line);
text-align:left}
figure.quota{flex:1 1 560px;margin:0;background:#fff;border:1px solid var(--line);
border-radius:8px;padding:8px}
figure.quota svg{display:block;width:100%;max-width:900px;height:auto}
figure.quota figcaption{color:var(--dim);font-size:12px;margin-top:4px}
.bar{fill:#6f93e0}.bar.over{fill:var(--bad)}
.axis{stroke:#9aa5b4}.limit{stroke:var(--bad);stroke-dasharray:5 4}
.tick{font-size:11px;fill:var(--dim)}.limit-label{font-size:11px;fill:var(--bad)}
.filters{position:sticky;top:0;z-index:1;display:flex;flex-wrap:wrap;gap:8px 16px;
align-items:center;margin:16px 0 10px;padding:8px 10px;background:#fff;border:1px solid
var(--line);border-radius:8px}
.filters input[type=number]{width:7em}
.count{margin-left:auto;color:var(--dim)}
.card{display:grid;grid-template-columns:104px 1fr;gap:12px;background:#fff;border:1px solid
var(--line);border-radius:8px;padding:10px;margin:0 0 10px}
.card[hidden]{display:none}
.card.failed{border-left:4px solid var(--bad)}
.thumb{width:96px;height:96px;object-fit:contain;background:#eceff3;border-radius:4px}
.note{font-size:11px;color:var(--dim);margin-top:2px;word-break:break-word}
.head{display:flex;flex-wrap:wrap;gap:4px 10px;align-items:baseline}
.name{font-weight:600;font-size:15px;word-break:break-all}
.path{color:var(--dim);font-size:12px;word-break:break-all}
.badge{font-size:12px;padding:0 6px;border-radius:9px;background:#eef1f5;color:var(--dim)}
.badge.bad{background:#fde8e6;color:var(--bad)}
.badge.ok{background:#e5f4ea;color:var(--ok)}
.failure{color:var(--bad);margin:4px 0 0}
.known{margin:2px 0 0}
.known b{font-weight:600}
table.offers{width:100%;border-collapse:collapse;margin-top:6px;font-size:13px}
table.offers th{text-align:left;color:var(--dim);font-weight:500;font-size:12px;
border-bottom:1px solid var(--line);padding:2px 6px}
table.offers td{vertical-align:top;border-bottom:1px solid #f0f2f5;padding:4px 6px}
table.offers th.num{text-align:right}
table.offers td.pic img{display:block;object-fit:contain;background:#eceff3;border-radius:3px}
table.offers .what{width:100%}
td.price{white-space:nowrap;text-align:right}
.tiers span{display:inline-block;white-space:nowrap;margin-left:6px}
table.offers tr:last-child td{border-bottom:0}
.en,.seller,.tiers{display:block;color:var(--dim);font-size:12px}
.tiers{white-space:normal;width:15em;margin-left:auto}
.num{white-space:nowrap;text-align:right}
td.links a{display:block;white-space:nowrap}
a{color:var(--accent)}
.empty{color:var(--dim);margin:6px 0 0}
.more{text-align:center}
.more button{font:inherit;padding:6px 18px}
#report-check{white-space:pre-wrap}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var PAGE = __PAGE__;
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var photos = data.photos;
  var columns = {};
  data.columns.forEach(function (name) { columns[name] = true; });
  // Left out (--no-offer-images), or none in the cache: no column of empty cells.
  var offerImages = data.images.length > 0;
  var container = document.getElementById("cards");
  var more = document.getElementById("more");
  var count = document.getElementById("count");
  var controls = {
    verdict: document.getElementById("verdict"),
    lo: document.getElementById("price-lo"),
    hi: document.getElementById("price-hi"),
    failed: document.getElementById("failed")
  };
  var hasSimilarity = photos.some(function (photo) {
    return (photo.offers || []).some(function (offer) { return offer.similarity !== undefined; });
  });
  var rendered = [];
  var limit = PAGE;
  var filter = {verdict: "", lo: null, hi: null, failed: false};

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function link(url, text) {
    if (!/^https?:\/\//i.test(url)) return el("span", null, url);
    var a = el("a", null, text);
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function yuan(lo, hi) {
    if (lo === undefined) return "?";
    return hi === undefined || hi === lo ? "\u00a5" + lo : "\u00a5" + lo + "\u2013" + hi;
  }

  function offerRow(offer) {
    var row = el("tr");
    row.appendChild(el("td", "num", offer.rank));
    if (offerImages) {
      var pic = row.appendChild(el("td", "pic"));
      if (offer.img !== undefined) {
        var img = pic.appendChild(el("img"));
        img.alt = "the offer's image";
        img.width = 48;
        img.height = 48;
        img.src = data.images[offer.img];
      }
    }
    var what = el("td", "what");
    what.appendChild(el("span", "title", offer.title || "(no title)"));
    if (offer.title_en) what.appendChild(el("span", "en", offer.title_en));
    var seller = [offer.supplier, offer.city].filter(Boolean).join(" \u00b7 ");
    if (seller) what.appendChild(el("span", "seller", seller));
    row.appendChild(what);
    var price = el("td", "price", yuan(offer.lo, offer.hi));
    if (offer.tiers) {
      var tiers = price.appendChild(el("span", "tiers"));
      tiers.title = "buy at least N units, pay this unit price";
      offer.tiers.forEach(function (tier) {
        tiers.appendChild(el("span", null, tier[0] + "+ \u00a5" + tier[1]));
      });
    }
    row.appendChild(price);
    var moq = offer.moq === undefined ? "?" : offer.moq + (offer.unit || "");
    row.appendChild(el("td", "num", moq));
    if (columns.verdict) row.appendChild(el("td", null, offer.verdict || ""));
    if (columns.visual_score) {
      row.appendChild(el("td", "num", offer.score === undefined ? "" : offer.score.toFixed(2)));
    }
    if (hasSimilarity) {
      row.appendChild(el("td", "num",
        offer.similarity === undefined ? "" : offer.similarity.toFixed(2)));
    }
    var links = el("td", "links");
    links.appendChild(link(offer.url, "offer \u2197"));
    if (offer.image) links.appendChild(link(offer.image, "image \u2197"));
    row.appendChild(links);
    return row;
  }

  function offerTable(offers) {
    var table = el("table", "offers");
    var head = el("tr");
    var names = [["#", "num"]];
    if (offerImages) names.push(["Image", null]);
    names.push(["Offer", "what"], ["Price (CNY), tiers", "num"], ["MOQ", "num"]);
    if (columns.verdict) names.push(["Verdict", null]);
    if (columns.visual_score) names.push(["Visual score", "num"]);
    if (hasSimilarity) names.push(["Similarity", "num"]);
    names.push(["", null]);
    names.forEach(function (name) { head.appendChild(el("th", name[1], name[0])); });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    offers.forEach(function (offer) { body.appendChild(offerRow(offer)); });
    return table;
  }

  function card(photo) {
    var root = el("article", "card" + (photo.status === "failed" ? " failed" : ""));
    root.dataset.photo = photo.path;
    root.dataset.status = photo.status;
    var side = root.appendChild(el("div"));
    var img = side.appendChild(el("img", "thumb"));
    img.alt = photo.thumb ? "the query photo" : "no preview";
    img.width = 96;
    img.height = 96;
    img.src = photo.thumb || data.placeholder;
    // A failed photo's message already says what is wrong with its file.
    if (photo.note && (photo.thumb || photo.status !== "failed")) {
      side.appendChild(el("div", "note", photo.note));
    }
    var body = root.appendChild(el("div"));
    var head = body.appendChild(el("div", "head"));
    head.appendChild(el("span", "name", photo.path.split(/[\\/]/).pop()));
    if (photo.status === "failed") {
      head.appendChild(el("span", "badge bad", "failed: " + (photo.reason || "unknown")));
    } else if (photo.kept !== undefined) {
      var kept = photo.kept + " of " + photo.received + " offers kept";
      head.appendChild(el("span", "badge ok", kept));
    }
    if (photo.reused) head.appendChild(el("span", "badge", "reused answer"));
    body.appendChild(el("div", "path", photo.path));
    if (photo.sku) appendKnown(body, "SKU", photo.sku);
    if (photo.title) appendKnown(body, "Title", photo.title);
    if (photo.status === "failed") {
      body.appendChild(el("p", "failure", photo.message || photo.reason));
    } else if (photo.offers) {
      body.appendChild(offerTable(photo.offers));
    } else {
      var why = (photo.removed || []).map(function (pair) {
        return pair[1] + " by " + pair[0];
      }).join(", ");
      why = why ? " (removed: " + why + ")" : "";
      body.appendChild(el("p", "empty", "No offer kept" + why + "."));
    }
    return root;
  }

  function appendKnown(parent, label, value) {
    var line = parent.appendChild(el("div", "known"));
    line.appendChild(el("b", null, label + ": "));
    line.appendChild(document.createTextNode(value));
  }

  function inPriceRange(offer) {
    if (offer.lo === undefined) return false;
    var lo = parseFloat(offer.lo), hi = parseFloat(offer.hi === undefined ? offer.lo : offer.hi);
    return (filter.lo === null || hi >= filter.lo) && (filter.hi === null || lo <= filter.hi);
  }

  function matches(photo) {
    if (filter.failed && photo.status !== "failed") return false;
    var offers = photo.offers || [];
    if (filter.verdict && !offers.some(function (o) { return o.verdict === filter.verdict; })) {
      return false;
    }
    if ((filter.lo !== null || filter.hi !== null) && !offers.some(inPriceRange)) return false;
    return true;
  }

  // Cards are made on demand, in the photos' order, and kept: a card that does not match (or
  // lies beyond the pages asked for) is hidden, not removed.
  function apply() {
    var shown = 0, matching = 0, after = null;
    for (var i = 0; i < photos.length; i++) {
      var node = rendered[i];
      var wanted = matches(photos[i]);
      if (wanted) matching++;
      if (wanted && shown < limit) {
        if (!node) {
          node = rendered[i] = card(photos[i]);
          if (after) after.after(node); else container.prepend(node);
        }
        node.hidden = false;
        shown++;
      } else if (node) {
        node.hidden = true;
      }
      if (node) after = node;
    }
    var all = photos.length.toLocaleString();
    count.textContent = matching === photos.length
      ? "Showing " + shown.toLocaleString() + " of " + all + " photos"
      : "Showing " + shown.toLocaleString() + " of " + matching.toLocaleString() +
        " matching photos (" + all + " in all)";
    var left = matching - shown;
    more.hidden = left <= 0;
    more.textContent = "Show " + Math.min(PAGE, left).toLocaleString() + " more (" +
      left.toLocaleString() + " left)";
  }

  function number(text) {
    var value = parseFloat(text);
    return isFinite(value) ? value : null;
  }

  function fromHash() {
    var next = {verdict: "", lo: null, hi: null, failed: false}, check = false;
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var eq = part.indexOf("=");
      var key = eq < 0 ? part : part.slice(0, eq);
      var value = eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1));
      if (key === "failed") next.failed = true;
      else if (key === "verdict") next.verdict = value;
      else if (key === "check") check = true;
      else if (key === "price") {
        var range = value.split("-");
        next.lo = number(range[0]);
        next.hi = range.length > 1 ? number(range[1]) : null;
      }
    });
    filter = next;
    controls.verdict.value = filter.verdict;
    controls.lo.value = filter.lo === null ? "" : filter.lo;
    controls.hi.value = filter.hi === null ? "" : filter.hi;
    controls.failed.checked = filter.failed;
    return check;
  }

  function fromControls() {
    filter = {
      verdict: controls.verdict.value,
      lo: number(controls.lo.value),
      hi: number(controls.hi.value),
      failed: controls.failed.checked
    };
    var parts = [];
    if (filter.failed) parts.push("failed");
    if (filter.verdict) parts.push("verdict=" + encodeURIComponent(filter.verdict));
    if (filter.lo !== null || filter.hi !== null) {
      parts.push("price=" + (filter.lo === null ? "" : filter.lo) + "-" +
        (filter.hi === null ? "" : filter.hi));
    }
    try {
      history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
    } catch (e) { /* a file: URL may refuse: the filters work all the same */ }
    limit = PAGE;
    apply();
  }

  // Synchronous, on the load event, so that a headless browser dumping the page once it has
  // loaded always finds the result: img.decode() settles off the main thread, and a dump taken
  // while the page is idle came before its promise once in CI.
  function check() {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (img) {
      return !(img.complete && img.naturalWidth > 0);  // what a browser shows as broken
    }).map(function (img) {
      var owner = img.closest("[data-photo]");
      return owner ? owner.dataset.photo : img.alt;
    });
    var out = el("pre", null, JSON.stringify({
      images: images.length, decoded: images.length - broken.length, broken: broken
    }));
    out.id = "report-check";
    document.body.appendChild(out);
  }

  var verdicts = {};
  photos.forEach(function (photo) {
    (photo.offers || []).forEach(function (offer) {
      if (offer.verdict) verdicts[offer.verdict] = true;
    });
  });
  Object.keys(verdicts).sort().forEach(function (verdict) {
    var option = el("option", null, verdict);
    option.value = verdict;
    controls.verdict.appendChild(option);
  });
  if (columns.verdict) document.getElementById("verdict-filter").hidden = false;

  var form = document.getElementById("filters");
  form.addEventListener("input", fromControls);
  form.addEventListener("change", fromControls);
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.addEventListener("reset", function () { setTimeout(fromControls, 0); });
  more.addEventListener("click", function () { limit += PAGE; apply(); });
  window.addEventListener("hashchange", function () { fromHash(); limit = PAGE; apply(); });

  // The first page's cards are made whatever the filters: a filter hides what it leaves out.
  for (var first = 0; first < Math.min(PAGE, photos.length); first++) {
    rendered[first] = container.appendChild(card(photos[first]));
  }
  var checking = fromHash();
  apply();
  if (checking) window.addEventListener("load", check);  // this script runs while parsing
})();
"""
