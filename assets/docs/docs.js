// pushworker API docs: Swagger UI over /openapi.json, with the admin page's
// sign-in (ClerkJS, or the development sign-in under `make run`), so that
// "Try it out" calls the API with the signed-in person's session token.
//
// Plain JavaScript, no build step: the server embeds this file as it is. The
// token lives in this closure only (never in storage or cookies); Swagger UI
// gets it through preauthorization, and each request it sends is given the
// current token, as session tokens last a minute and are renewed.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  // The scheme "Try it out" uses for people (see /openapi.json).
  const SCHEME = 'clerk_session';

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function showBoot(text, isError) {
    const boot = $('boot');
    boot.hidden = !text;
    boot.textContent = text || '';
    boot.className = isError ? 'notice error' : 'notice';
  }

  let config = null;
  let ui = null;
  /** @type {{getToken: () => Promise<string|null>, signOut: () => Promise<void>, label: () => string}|null} */
  let auth = null;
  // The token last handed to Swagger UI: a request carrying it gets the
  // current one instead; a token typed into "Authorize" is left alone.
  let handedOut = null;

  // ------------------------------------------------------------------
  // The development sign-in: the admin page's, a 60 s token renewed ahead
  // of expiry.
  // ------------------------------------------------------------------

  const dev = { token: null, expiresAt: 0, persona: null, timer: null };

  async function devRequest(persona) {
    const response = await fetch('/admin/dev/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ persona }),
      credentials: 'omit',
      cache: 'no-store',
    });
    const body = await response.json().catch(() => null);
    if (!response.ok || !body?.token) {
      throw new Error(body?.message || `the development sign-in answered ${response.status}`);
    }
    dev.token = body.token;
    dev.persona = persona;
    dev.expiresAt = Date.now() + body.expires_in * 1000;
    clearTimeout(dev.timer);
    dev.timer = setTimeout(() => devRequest(persona).then(handOver).catch(() => {}),
      Math.max(5, body.expires_in - 10) * 1000);
  }

  const devAuth = {
    async getToken() {
      if (!dev.persona) return null;
      if (!dev.token || Date.now() > dev.expiresAt - 10000) await devRequest(dev.persona);
      return dev.token;
    },
    async signOut() {
      clearTimeout(dev.timer);
      Object.assign(dev, { token: null, persona: null, expiresAt: 0 });
      signedOut();
    },
    label: () => `development ${dev.persona}`,
  };

  function renderDevSignIn() {
    const error = h('p', { class: 'field-error', role: 'alert', id: 'dev-signin-error' });
    $('signin-body').replaceChildren(
      h('p', { class: 'help' }, 'Development mode (', h('code', {}, 'make run'),
        '): choose who to be; the server mints a 60-second development token for this page, from this machine only.'),
      h('div', { class: 'personas' }, (config.personas || []).map((p) => h('button', {
        type: 'button',
        class: p.id === 'admin' ? 'primary' : '',
        id: `dev-signin-${p.id}`,
        title: p.description,
        onclick: async (event) => {
          const button = event.currentTarget;
          button.disabled = true;
          error.textContent = '';
          try {
            await devRequest(p.id);
            auth = devAuth;
            await signedIn();
          } catch (e) {
            error.textContent = `Sign-in failed: ${e.message}`;
          } finally {
            button.disabled = false;
          }
        },
      }, `Sign in as ${p.label}`))),
      error,
    );
  }

  // ------------------------------------------------------------------
  // ClerkJS, as on the admin page.
  // ------------------------------------------------------------------

  async function startClerk() {
    const Clerk = window.Clerk;
    if (!Clerk) {
      showBoot(`ClerkJS could not be loaded from ${config.frontend_api}. Check the network and CLERK_PUBLISHABLE_KEY.`, true);
      return;
    }
    const here = window.location.href.split('#')[0];
    await Clerk.load({
      telemetry: false,
      signInForceRedirectUrl: here,
      signUpForceRedirectUrl: here,
      afterSignOutUrl: here,
    });
    const clerkAuth = {
      async getToken() {
        return Clerk.session ? await Clerk.session.getToken() : null;
      },
      async signOut() {
        await Clerk.signOut();
      },
      label: () => Clerk.user?.primaryEmailAddress?.emailAddress || Clerk.user?.id || 'Clerk user',
    };
    let state = null;
    const onChange = ({ user, organization }) => {
      const now = user ? `${user.id} ${organization?.id || ''}` : '';
      if (now === state) return;
      state = now;
      if (user) {
        auth = clerkAuth;
        signedIn();
      } else {
        signedOut();
      }
    };
    Clerk.addListener(onChange);
    onChange({ user: Clerk.user, organization: Clerk.organization });
  }

  // ------------------------------------------------------------------
  // Signed in or out.
  // ------------------------------------------------------------------

  async function handOver() {
    if (!auth || !ui) return;
    const token = await auth.getToken().catch(() => null);
    if (!token) return;
    handedOut = token;
    ui.preauthorizeApiKey(SCHEME, token);
  }

  async function signedIn() {
    $('signin').hidden = true;
    showBoot('');
    const account = $('account');
    if (config.sign_in === 'clerk') {
      const button = h('div', { class: 'user-button' });
      account.replaceChildren(button);
      window.Clerk.mountUserButton(button);
    } else {
      account.replaceChildren(
        h('span', { class: 'who', id: 'account-label' }, auth.label()),
        h('button', { type: 'button', id: 'sign-out', onclick: () => auth.signOut() }, 'Sign out'),
      );
    }
    await handOver();
  }

  function signedOut() {
    // Only once something was authorized: Swagger UI's logout assumes it.
    if (ui && handedOut) ui.authActions.logout([SCHEME]);
    auth = null;
    handedOut = null;
    $('account').replaceChildren();
    $('signin').hidden = false;
    if (config.sign_in === 'clerk') {
      const target = h('div', { id: 'clerk-signin' });
      $('signin-body').replaceChildren(target);
      window.Clerk.mountSignIn(target, { routing: 'hash', forceRedirectUrl: window.location.href.split('#')[0] });
    } else if (config.sign_in === 'dev') {
      renderDevSignIn();
    } else {
      $('signin-body').replaceChildren(h('p', { class: 'notice' }, config.reason || 'Sign-in is not configured.'));
    }
  }

  /** Gives a request Swagger UI sends the current token, if it carries ours. */
  async function withCurrentToken(request) {
    const sent = request.headers?.Authorization;
    if (auth && handedOut && sent === `Bearer ${handedOut}`) {
      const token = await auth.getToken().catch(() => null);
      if (token && token !== handedOut) {
        handedOut = token;
        request.headers.Authorization = `Bearer ${token}`;
        ui.preauthorizeApiKey(SCHEME, token);
      }
    }
    return request;
  }

  async function main() {
    ui = window.SwaggerUIBundle({
      url: '/openapi.json',
      dom_id: '#swagger-ui',
      deepLinking: true,
      // No badge fetched from the validator's site: the CSP allows none.
      validatorUrl: 'none',
      tryItOutEnabled: false,
      requestInterceptor: withCurrentToken,
    });
    try {
      const response = await fetch('/admin/config.json', { credentials: 'omit', cache: 'no-store' });
      config = await response.json();
    } catch (e) {
      showBoot(`Could not load the sign-in settings (${e.message}). The document works without signing in.`, true);
      return;
    }
    showBoot('');
    if (config.sign_in === 'clerk') await startClerk();
    else signedOut();
  }

  if (!window.SwaggerUIBundle) {
    showBoot('Swagger UI could not be loaded.', true);
    return;
  }
  main();
})();
