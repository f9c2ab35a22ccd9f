// The bearer token: taken from the page address's fragment (#token=…) or pasted,
// kept in sessionStorage for this tab, never sent anywhere but the authorization header.

const TOKEN_KEY = "chatd.token";

/** Moves a `#token=…` fragment into sessionStorage and removes it from the address bar. */
export function adoptTokenFromFragment(): void {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]).trim());
    history.replaceState(null, "", location.href.split("#")[0]);
  }
}

export function currentToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Who the token names, for display only (the server verifies it; the page does not). */
export interface TokenUser {
  userId: string;
  name: string;
  expiresAt?: Date;
}

export function tokenUser(token: string): TokenUser | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof claims !== "object" || claims === null) return null;
    const { sub, name, exp } = claims as Record<string, unknown>;
    if (typeof sub !== "string") return null;
    return {
      userId: sub,
      name: typeof name === "string" && name !== "" ? name : sub,
      expiresAt: typeof exp === "number" ? new Date(exp * 1000) : undefined,
    };
  } catch {
    return null;
  }
}
