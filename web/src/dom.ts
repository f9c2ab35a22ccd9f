// Small DOM helpers shared by the page's parts. User content only ever goes through
// textContent or a checked http(s) URL attribute, never innerHTML.

export function byId<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element as T;
}

/** The URL when `text` is an absolute http(s) URL, else null. */
export function httpUrl(text: string): URL | null {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch {
    return null;
  }
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

export function link(url: URL, text: string): HTMLAnchorElement {
  const a = el("a", undefined, text);
  a.href = url.href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  return a;
}

/** http(s) URLs in running text; trailing punctuation stays text. */
const URL_IN_TEXT = /https?:\/\/[^\s<>"']+/g;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/** Text with its http(s) URLs as links. */
export function linkified(text: string): Node[] {
  const nodes: Node[] = [];
  let from = 0;
  for (const match of text.matchAll(URL_IN_TEXT)) {
    const raw = match[0].replace(TRAILING, "");
    const url = httpUrl(raw);
    const at = match.index ?? 0;
    if (!url) continue;
    if (at > from) nodes.push(document.createTextNode(text.slice(from, at)));
    nodes.push(link(url, raw));
    from = at + raw.length;
  }
  if (from < text.length) nodes.push(document.createTextNode(text.slice(from)));
  return nodes;
}
