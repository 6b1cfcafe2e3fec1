/** The pieces every report page shares: escaping, tables, the page shell. */

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** An HTML table of text cells. */
export function table(head: string[], rows: string[][]): string {
  const tr = (cells: string[], tag: string) =>
    `<tr>${cells.map((c) => `<${tag}>${escapeHtml(c)}</${tag}>`).join("")}</tr>`;
  return `<table><thead>${tr(head, "th")}</thead><tbody>${
    rows.map((r) => tr(r, "td")).join("")
  }</tbody></table>`;
}

/** A self-contained page: inline style, no script, no external resource. */
export function page(o: { title: string; body: string }): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(o.title)}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { margin: 0; }
.missing { color: #8a4b00; }
.note { color: #666; }
</style></head>
<body><h1>${escapeHtml(o.title)}</h1>
<p>Written ${new Date().toISOString()}.</p>
${o.body}
</body></html>
`;
}
