// pushworker admin page: sign in, trigger jobs by hand, watch the runs.
//
// Plain JavaScript with no build step: the server embeds this file and
// serves it as it is; its one dependency, uPlot (the Overview charts), is
// vendored in assets/admin/vendor/ and loaded before it. Every call to the
// API carries `Authorization: Bearer <token>`, where the token comes from
// ClerkJS (`Clerk.session.getToken()`) or, under `make run`, from the
// development sign-in, whose token is kept in a variable of this closure
// only: nothing is ever written to localStorage, sessionStorage or cookies.
// All text from the server is inserted with textContent, never as HTML.
(() => {
  'use strict';

  const API = (document.querySelector('meta[name="pushworker-api"]')?.content || '').replace(/\/+$/, '');
  const $ = (id) => document.getElementById(id);

  /** Builds an element: h('p', {class: 'x'}, 'text', child). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (value === true) el.setAttribute(key, '');
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const pretty = (value) => JSON.stringify(value, null, 2);

  function randomKey() {
    if (window.crypto?.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function showBoot(text, isError) {
    const boot = $('boot');
    boot.hidden = !text;
    boot.textContent = text || '';
    boot.className = isError ? 'notice error' : 'notice';
  }

  // ------------------------------------------------------------------
  // Sign-in: one small interface over ClerkJS and the development sign-in.
  // ------------------------------------------------------------------

  /** @type {{getToken: () => Promise<string|null>, signOut: () => Promise<void>, label: () => string}} */
  let auth = null;
  let config = null;

  /** Development sign-in: a 60 s token, re-requested before it expires. */
  const dev = { token: null, expiresAt: 0, persona: null, timer: null };

  async function devRequest(persona) {
    const response = await fetch(API + '/admin/dev/session', {
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
    // The browser's own clock: immune to skew with the server's.
    dev.expiresAt = Date.now() + body.expires_in * 1000;
    clearTimeout(dev.timer);
    // Like ClerkJS, refresh ahead of expiry while signed in.
    dev.timer = setTimeout(() => devRequest(persona).catch(() => {}), Math.max(5, body.expires_in - 10) * 1000);
  }

  const devAuth = {
    async getToken() {
      if (!dev.persona) return null;
      if (!dev.token || Date.now() > dev.expiresAt - 10000) await devRequest(dev.persona);
      return dev.token;
    },
    async signOut() {
      clearTimeout(dev.timer);
      dev.token = null;
      dev.persona = null;
      dev.expiresAt = 0;
      showSignedOut();
    },
    label: () => `development ${dev.persona}`,
  };

  function renderDevSignIn() {
    const body = $('signin-body');
    const error = h('p', { class: 'field-error', role: 'alert', id: 'dev-signin-error' });
    body.replaceChildren(
      h('p', {}, 'Development mode (',
        h('code', {}, 'make run'),
        '): no Clerk instance is used. Choose who to be; the server mints a 60-second development token for this page, from this machine only.'),
      h('div', { class: 'personas' },
        (config.personas || []).map((p) => h('button', {
          type: 'button',
          class: p.id === 'admin' ? 'primary' : '',
          id: `dev-signin-${p.id}`,
          'aria-describedby': `dev-persona-${p.id}`,
          onclick: async (event) => {
            const button = event.currentTarget;
            button.disabled = true;
            error.textContent = '';
            try {
              await devRequest(p.id);
              await showSignedIn();
            } catch (e) {
              error.textContent = `Sign-in failed: ${e.message}`;
            } finally {
              button.disabled = false;
            }
          },
        }, `Sign in as ${p.label}`)),
      ),
      h('ul', { class: 'help' }, (config.personas || []).map((p) =>
        h('li', { id: `dev-persona-${p.id}` }, h('strong', {}, p.label), ': ', p.description))),
      error,
    );
  }

  async function startClerk() {
    const Clerk = window.Clerk;
    if (!Clerk) {
      showBoot(`ClerkJS could not be loaded from ${config.frontend_api}. Check the network and CLERK_PUBLISHABLE_KEY.`, true);
      return;
    }
    const here = window.location.href.split('#')[0];
    await Clerk.load({
      // Development instances send telemetry to a host the CSP refuses.
      telemetry: false,
      signInForceRedirectUrl: here,
      signUpForceRedirectUrl: here,
      afterSignOutUrl: here,
    });
    auth = {
      async getToken() {
        return Clerk.session ? await Clerk.session.getToken() : null;
      },
      async signOut() {
        await Clerk.signOut();
      },
      label: () => Clerk.user?.primaryEmailAddress?.emailAddress || Clerk.user?.id || 'Clerk user',
    };
    let signedIn = null;
    let organization = null;
    // Sign-in, sign-out and a change of active organization (which changes
    // the token's permissions) all come through here.
    const onChange = ({ user, organization: org }) => {
      const now = Boolean(user);
      const orgId = org?.id || null;
      if (now === signedIn && orgId === organization) return;
      const orgChanged = signedIn && now && orgId !== organization;
      signedIn = now;
      organization = orgId;
      if (!now) showSignedOut();
      else if (orgChanged) loadWhoami();
      else showSignedIn();
    };
    Clerk.addListener(onChange);
    onChange({ user: Clerk.user, organization: Clerk.organization });
  }

  function mountClerkAccount() {
    const account = $('account');
    account.replaceChildren();
    const Clerk = window.Clerk;
    if (Clerk.user?.organizationMemberships?.length) {
      const switcher = h('div', { class: 'org-switcher' });
      account.append(switcher);
      Clerk.mountOrganizationSwitcher(switcher, { hidePersonal: false });
    }
    const button = h('div', { class: 'user-button' });
    account.append(button);
    Clerk.mountUserButton(button);
  }

  function renderAccount() {
    if (config.sign_in === 'clerk') {
      mountClerkAccount();
      return;
    }
    $('account').replaceChildren(
      h('span', { class: 'who', id: 'account-label' }, auth.label()),
      h('button', { type: 'button', id: 'sign-out', onclick: () => auth.signOut() }, 'Sign out'),
    );
  }

  function showSignedOut() {
    stopLive();
    $('app').hidden = true;
    $('account').replaceChildren();
    $('signin').hidden = false;
    showBoot('');
    if (config.sign_in === 'clerk') {
      const target = h('div', { id: 'clerk-signin' });
      $('signin-body').replaceChildren(target);
      window.Clerk.mountSignIn(target, {
        routing: 'hash',
        forceRedirectUrl: window.location.href.split('#')[0],
      });
    } else {
      auth = devAuth;
      renderDevSignIn();
    }
  }

  async function showSignedIn() {
    $('signin').hidden = true;
    if (config.sign_in === 'clerk') {
      const target = $('clerk-signin');
      if (target) window.Clerk.unmountSignIn(target);
    }
    $('app').hidden = false;
    showBoot('');
    renderAccount();
    await Promise.all([loadWhoami(), loadJobs()]);
    await loadRuns();
    loadOverview();
    loadDead();
  }

  // ------------------------------------------------------------------
  // The API.
  // ------------------------------------------------------------------

  /** Calls the API with the bearer token; never throws for HTTP errors. */
  async function api(path, options = {}) {
    let token;
    try {
      token = await auth.getToken();
    } catch (e) {
      return { status: 0, ok: false, body: { error: 'session', message: `could not get a session token (${e.message})` } };
    }
    const headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(API + path, Object.assign({}, options, { headers, credentials: 'omit', cache: 'no-store' }));
    } catch (e) {
      return { status: 0, ok: false, body: { error: 'network', message: `could not reach the server (${e.message})` } };
    }
    const body = await response.json().catch(() => null);
    return { status: response.status, ok: response.ok, body };
  }

  function describeFailure(result) {
    const message = result.body?.message || result.body?.error || '';
    return `${result.status || 'network error'}${message ? `: ${message}` : ''}`;
  }

  // ------------------------------------------------------------------
  // Who am I.
  // ------------------------------------------------------------------

  let whoami = null;

  async function loadWhoami() {
    const body = $('whoami-body');
    const result = await api('/auth/whoami');
    if (!result.ok) {
      whoami = null;
      body.replaceChildren(h('p', { class: 'error' }, `Could not read your identity (${describeFailure(result)}).`));
      if (result.status === 401 && config.sign_in === 'dev') await devAuth.signOut();
      applyTriggerPermission();
      return;
    }
    whoami = result.body;
    renderWhoami();
    applyTriggerPermission();
  }

  function dl(rows, className) {
    return h('dl', { class: className || 'facts' }, rows.filter(Boolean).map(([term, value]) => h('div', {},
      h('dt', {}, term),
      h('dd', {}, value === null || value === undefined || value === '' ? h('span', { class: 'muted' }, 'none') : value))));
  }

  function renderWhoami() {
    const p = whoami.principal || {};
    const rows = [];
    if (p.kind === 'clerk') {
      rows.push(['User', h('code', { id: 'whoami-user' }, p.user_id)]);
      rows.push(['Session', h('code', {}, p.session_id)]);
      const org = p.organization;
      rows.push(['Organization', org ? h('span', { id: 'whoami-org' }, org.slug || org.id, ' ', h('code', { class: 'muted' }, org.id)) : null]);
      rows.push(['Role', org?.role ? h('code', { id: 'whoami-role' }, org.role) : null]);
      const permissions = org?.permissions || [];
      rows.push(['Permissions', permissions.length
        ? h('ul', { class: 'chips', id: 'whoami-permissions' }, permissions.map((x) => h('li', {}, h('code', {}, x))))
        : null]);
    } else if (p.kind === 'google') {
      rows.push(['Service account', h('code', {}, p.email)]);
      rows.push(['Audience', h('code', {}, p.audience)]);
    }
    const verdict = whoami.can_trigger
      ? h('p', { class: 'ok', id: 'can-trigger' }, '✓ You may run jobs.')
      : h('div', { class: 'warning', id: 'cannot-trigger', role: 'note' },
          h('p', {}, h('strong', {}, 'You can look at jobs and runs, but you cannot run them.')),
          h('p', {}, 'Running a job requires the permission ', h('code', {}, whoami.trigger_permission),
            ' in your active organization, and your session does not have it.'),
          whoami.trigger_denied_reason ? h('p', { class: 'muted' }, `Server: ${whoami.trigger_denied_reason}.`) : null,
          h('p', {}, 'Ask an admin of your organization to grant it (Clerk dashboard → Organizations → Roles & Permissions), then sign in again.'));
    const how = p.kind === 'google' ? 'a Google service identity'
      : config.sign_in === 'dev' ? 'Clerk (development identity)' : 'Clerk';
    $('whoami-body').replaceChildren(
      h('p', { class: 'kind' }, 'Signed in with ', h('strong', {}, how)),
      dl(rows, 'facts facts-wide'),
      verdict,
    );
  }

  // ------------------------------------------------------------------
  // Overview: runs per minute by status and the p95 duration per job over
  // the last hour (GET /runs/stats), drawn with the vendored uPlot.
  // ------------------------------------------------------------------

  const STATUS_ORDER = ['running', 'succeeded', 'failed_transient', 'failed_permanent', 'dead_lettered', 'duplicate', 'conflict'];
  const STATUS_COLORS = {
    running: '#1f5fd1', succeeded: '#17743a', failed_transient: '#c77700', failed_permanent: '#b3261e',
    dead_lettered: '#7a3fb0', duplicate: '#7b8794', conflict: '#d1366f',
  };
  const SERIES_COLORS = ['#1f5fd1', '#c77700', '#17743a', '#b3261e', '#7a3fb0', '#0f8b8d', '#d1366f', '#7b8794'];
  const overview = { charts: {}, loading: false };

  /** The page's own colours (light or dark scheme), for the axes. */
  function cssColor(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  /**
   * (Re)draws chart `id` with x values `xs` and `series` [{label, color,
   * values}]; `points` marks each value (sparse series, where a lone minute
   * would draw no line).
   */
  function drawChart(id, xs, series, unit, points) {
    const target = $(id);
    overview.charts[id]?.destroy();
    target.replaceChildren();
    const text = cssColor('--muted', '#5b6472');
    const grid = cssColor('--border', '#d6dae1');
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const chart = new window.uPlot({
      width: Math.max(target.clientWidth, 280),
      height: 220,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      axes: [axis, Object.assign({ label: unit, labelSize: 20 }, axis)],
      series: [{ label: 'time' }, ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: 2,
        points: { show: Boolean(points), size: 6, fill: s.color },
        spanGaps: false,
      }))],
      legend: { live: true },
    }, [xs, ...series.map((s) => s.values)], target);
    overview.charts[id] = chart;
  }

  /** Keeps the charts as wide as their boxes. */
  const chartResize = typeof ResizeObserver === 'function' ? new ResizeObserver((entries) => {
    for (const entry of entries) {
      const chart = overview.charts[entry.target.id];
      const width = Math.max(Math.floor(entry.contentRect.width), 280);
      if (chart && chart.width !== width) chart.setSize({ width, height: 220 });
    }
  }) : null;

  async function loadOverview() {
    if (!auth || $('app').hidden || overview.loading) return;
    const status = $('overview-status');
    if (typeof window.uPlot !== 'function') {
      status.className = 'notice error';
      status.textContent = 'The charts could not be drawn: uPlot did not load.';
      return;
    }
    overview.loading = true;
    let result;
    try {
      result = await api('/runs/stats?bucket=1m');
    } finally {
      overview.loading = false;
    }
    if (!result.ok) {
      status.className = result.status === 404 ? 'notice' : 'notice error';
      status.textContent = result.status === 404
        ? 'Run statistics are not available on this server (GET /runs/stats answered 404).'
        : `Could not load the overview (${describeFailure(result)}).`;
      return;
    }
    const stats = result.body;
    const step = stats.bucket_secs;
    const from = Date.parse(stats.since) / 1000;
    const to = Date.parse(stats.until) / 1000;
    const xs = [];
    for (let t = from; t < to; t += step) xs.push(t);
    const counts = new Map();
    const p95 = new Map();
    for (const b of stats.buckets || []) {
      const i = Math.round((Date.parse(b.start) / 1000 - from) / step);
      if (i < 0 || i >= xs.length) continue;
      if (!counts.has(b.status)) counts.set(b.status, xs.map(() => 0));
      counts.get(b.status)[i] += b.count;
      if (b.status === 'succeeded' && b.p95_ms !== null && b.p95_ms !== undefined) {
        if (!p95.has(b.job)) p95.set(b.job, xs.map(() => null));
        p95.get(b.job)[i] = b.p95_ms;
      }
    }
    // Known statuses in their usual order, then any this page does not know.
    const statuses = STATUS_ORDER.filter((s) => counts.has(s))
      .concat([...counts.keys()].filter((s) => !STATUS_ORDER.includes(s)).sort());
    drawChart('overview-runs', xs, statuses.map((s, i) => ({
      label: s, color: STATUS_COLORS[s] || SERIES_COLORS[i % SERIES_COLORS.length], values: counts.get(s),
    })), 'runs');
    drawChart('overview-p95', xs, [...p95.keys()].sort().map((job, i) => ({
      label: job, color: SERIES_COLORS[i % SERIES_COLORS.length], values: p95.get(job),
    })), 'ms', true);
    if (chartResize) {
      chartResize.observe($('overview-runs'));
      chartResize.observe($('overview-p95'));
    }
    status.className = 'notice';
    status.textContent = stats.buckets?.length ? '' : 'No runs in the last hour.';
  }

  // ------------------------------------------------------------------
  // Jobs and the payload form.
  // ------------------------------------------------------------------

  let jobs = [];
  let current = null; // { job, root, fields, extras, mode }

  async function loadJobs() {
    const status = $('jobs-status');
    status.textContent = 'Loading jobs…';
    const result = await api('/jobs');
    if (!result.ok) {
      status.textContent = `Could not list jobs (${describeFailure(result)}).`;
      status.className = 'notice error';
      return;
    }
    status.textContent = '';
    jobs = result.body.jobs || [];
    const list = $('job-list');
    list.replaceChildren(...jobs.map((job) => h('li', {},
      h('button', {
        type: 'button',
        class: 'job',
        id: `job-${job.name}`,
        'aria-pressed': 'false',
        'aria-controls': 'job-panel',
        onclick: () => selectJob(job.name),
      }, h('span', { class: 'job-name' }, job.name), h('span', { class: 'job-description' }, job.description)))));
    const filter = $('filter-job');
    const chosen = filter.value;
    filter.replaceChildren(h('option', { value: '' }, 'any'), ...jobs.map((j) => h('option', { value: j.name }, j.name)));
    filter.value = chosen;
    if (current) selectJob(current.job.name);
  }

  function selectJob(name) {
    const job = jobs.find((j) => j.name === name);
    if (!job) return;
    for (const button of document.querySelectorAll('#job-list button')) {
      button.setAttribute('aria-pressed', String(button.id === `job-${name}`));
    }
    const panel = $('job-panel');
    const opening = panel.hidden || current?.job.name !== name;
    panel.hidden = false;
    $('job-title').textContent = job.name;
    $('job-description').textContent = job.description;
    $('run-result').replaceChildren();
    const root = job.payload_schema || {};
    current = { job, root, fields: [], extras: null, mode: 'form', key: null };
    buildForm(current);
    setMode('form');
    applyTriggerPermission();
    if (opening) panel.scrollIntoView({ block: 'nearest' });
  }

  /** Follows local `$ref`s (`#/$defs/X`, as schemars writes them). */
  function resolve(schema, root) {
    let seen = 0;
    while (schema && typeof schema === 'object' && schema.$ref && seen++ < 32) {
      const match = /^#\/(\$defs|definitions)\/(.+)$/.exec(schema.$ref);
      schema = match ? root[match[1]]?.[decodeURIComponent(match[2]).replace(/~1/g, '/').replace(/~0/g, '~')] : undefined;
    }
    return schema === undefined ? true : schema;
  }

  /** The shape of a property: its kind of control and whether null is allowed. */
  function shapeOf(raw, root) {
    let schema = resolve(raw, root);
    if (schema === true || schema === false) return { kind: 'json', schema: {}, nullable: true };
    let nullable = false;
    // Option<T> from schemars: anyOf [T, {type: null}].
    const alternatives = schema.anyOf || schema.oneOf;
    if (alternatives && !schema.type) {
      const nonNull = alternatives.filter((s) => resolve(s, root)?.type !== 'null');
      nullable = nonNull.length < alternatives.length;
      const consts = nonNull.map((s) => resolve(s, root)).filter((s) => s && s.const !== undefined);
      if (consts.length && consts.length === nonNull.length) {
        return { kind: 'enum', schema, options: consts.map((s) => ({ value: s.const, label: s.title || String(s.const), description: s.description })), nullable };
      }
      if (nonNull.length === 1) {
        const inner = shapeOf(nonNull[0], root);
        return Object.assign(inner, { nullable: nullable || inner.nullable, description: schema.description || inner.description });
      }
      return { kind: 'json', schema, nullable };
    }
    if (Array.isArray(schema.enum)) {
      return { kind: 'enum', schema, options: schema.enum.filter((v) => v !== null).map((v) => ({ value: v, label: String(v) })), nullable: schema.enum.includes(null) };
    }
    let types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
    if (types.includes('null')) {
      nullable = true;
      types = types.filter((t) => t !== 'null');
    }
    const kind = types.length === 1 && ['string', 'integer', 'number', 'boolean'].includes(types[0]) ? types[0] : 'json';
    return { kind, schema, nullable };
  }

  function buildForm(state) {
    const container = $('form-fields');
    container.replaceChildren();
    const schema = resolve(state.root, state.root);
    const properties = (schema && schema.properties) || {};
    const required = new Set((schema && schema.required) || []);
    for (const [name, raw] of Object.entries(properties)) {
      const shape = shapeOf(raw, state.root);
      const description = resolve(raw, state.root)?.description || raw.description || shape.description;
      const id = `field-${name}`;
      const describedBy = [description ? `${id}-help` : null, `${id}-error`].filter(Boolean).join(' ');
      let control;
      const common = { id, name, 'aria-describedby': describedBy, 'data-field': name };
      if (shape.kind === 'enum') {
        control = h('select', common,
          required.has(name) ? null : h('option', { value: '' }, '—'),
          shape.options.map((o, i) => h('option', { value: String(i) }, o.label)));
      } else if (shape.kind === 'boolean') {
        control = h('input', Object.assign({ type: 'checkbox' }, common));
      } else if (shape.kind === 'integer' || shape.kind === 'number') {
        const s = shape.schema;
        control = h('input', Object.assign({
          type: 'number',
          inputmode: shape.kind === 'integer' ? 'numeric' : 'decimal',
          step: shape.kind === 'integer' ? '1' : 'any',
          min: s.minimum ?? s.exclusiveMinimum,
          max: s.maximum ?? s.exclusiveMaximum,
        }, common));
      } else if (shape.kind === 'string') {
        control = h('input', Object.assign({ type: 'text', autocomplete: 'off', spellcheck: 'false' }, common));
      } else {
        control = h('textarea', Object.assign({ rows: 3, spellcheck: 'false', placeholder: 'JSON' }, common));
      }
      if (required.has(name)) control.setAttribute('aria-required', 'true');
      const fieldDefault = resolve(raw, state.root)?.default ?? raw.default;
      const label = h('label', { for: id }, h('code', {}, name), required.has(name) ? h('span', { class: 'required' }, ' required') : h('span', { class: 'muted' }, ' optional'),
        shape.kind === 'json' ? h('span', { class: 'muted' }, ' (JSON)') : null);
      const field = h('div', { class: `field field-${shape.kind}` },
        shape.kind === 'boolean' ? h('div', { class: 'check' }, control, label) : [label, control],
        description ? h('p', { class: 'help', id: `${id}-help` }, description) : null,
        h('div', { class: 'field-error', id: `${id}-error`, role: 'alert' }));
      container.append(field);
      state.fields.push({ name, shape, control, required: required.has(name), field });
      if (fieldDefault !== undefined) setFieldValue(state.fields[state.fields.length - 1], fieldDefault);
    }
    const additional = schema && typeof schema === 'object' ? schema.additionalProperties : undefined;
    state.extras = null;
    if (additional !== false && additional !== undefined) {
      const id = 'extra-fields';
      const control = h('textarea', { id, rows: 3, spellcheck: 'false', placeholder: '{"key": "value"}', 'aria-describedby': `${id}-help ${id}-error` });
      container.append(h('div', { class: 'field field-json' },
        h('label', { for: id }, 'Other fields', h('span', { class: 'muted' }, ' optional (JSON object)')),
        control,
        h('p', { class: 'help', id: `${id}-help` }, 'This job accepts fields beyond the ones above; they are merged into the payload.'),
        h('div', { class: 'field-error', id: `${id}-error`, role: 'alert' })));
      state.extras = { control, field: control.parentElement };
    }
    if (!state.fields.length && !state.extras) {
      container.append(h('p', { class: 'muted' }, 'This job takes no fields; use the JSON editor for anything else.'));
    }
  }

  function setFieldValue(f, value) {
    const { shape, control } = f;
    if (shape.kind === 'boolean') control.checked = value === true;
    else if (shape.kind === 'enum') {
      const i = shape.options.findIndex((o) => JSON.stringify(o.value) === JSON.stringify(value));
      control.value = i >= 0 ? String(i) : '';
    } else if (shape.kind === 'json') control.value = value === undefined ? '' : pretty(value);
    else control.value = value === undefined || value === null ? '' : String(value);
  }

  /** Reads the form into a payload; `errors` gets what cannot be read. */
  function readForm(state, errors) {
    const payload = {};
    for (const f of state.fields) {
      const { shape, control, name } = f;
      const raw = control.value;
      if (shape.kind === 'boolean') {
        payload[name] = control.checked;
      } else if (shape.kind === 'enum') {
        if (raw !== '') payload[name] = shape.options[Number(raw)].value;
      } else if (shape.kind === 'integer' || shape.kind === 'number') {
        if (raw.trim() !== '') {
          const n = Number(raw);
          if (Number.isNaN(n)) errors.push({ path: name, message: 'not a number' });
          else payload[name] = n;
        } else if (control.validity && control.validity.badInput) {
          errors.push({ path: name, message: 'not a number' });
        }
      } else if (shape.kind === 'string') {
        // Empty means absent: a required field is then reported as missing.
        if (raw !== '') payload[name] = raw;
      } else if (raw.trim() !== '') {
        try {
          payload[name] = JSON.parse(raw);
        } catch (e) {
          errors.push({ path: name, message: `not valid JSON (${e.message})` });
        }
      }
    }
    if (state.extras && state.extras.control.value.trim() !== '') {
      try {
        const extra = JSON.parse(state.extras.control.value);
        if (!extra || typeof extra !== 'object' || Array.isArray(extra)) {
          errors.push({ path: '#extra', message: 'must be a JSON object' });
        } else {
          for (const [k, v] of Object.entries(extra)) {
            if (k in payload) errors.push({ path: '#extra', message: `\`${k}\` is already a field above` });
            else payload[k] = v;
          }
        }
      } catch (e) {
        errors.push({ path: '#extra', message: `not valid JSON (${e.message})` });
      }
    }
    return payload;
  }

  function fillForm(state, payload) {
    const known = new Set();
    for (const f of state.fields) {
      known.add(f.name);
      setFieldValue(f, payload[f.name]);
    }
    if (state.extras) {
      const rest = Object.fromEntries(Object.entries(payload).filter(([k]) => !known.has(k)));
      state.extras.control.value = Object.keys(rest).length ? pretty(rest) : '';
    }
  }

  function jsonType(value) {
    if (value === null) return 'null';
    if (Array.isArray(value)) return 'array';
    if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
    return typeof value;
  }

  const join = (path, key) => (typeof key === 'number' ? `${path}[${key}]` : path ? `${path}.${key}` : key);

  /**
   * Checks `value` against the basic rules of a JSON Schema: type, enum,
   * const, required, properties, additionalProperties, items, bounds of
   * numbers, strings and arrays, pattern, anyOf/oneOf/allOf. Paths are
   * written like the server's (`a.b[0].c`).
   */
  function validate(value, raw, root, path = '') {
    const schema = resolve(raw, root);
    if (schema === true || schema === undefined) return [];
    if (schema === false) return [{ path, message: 'is not allowed here' }];
    const errors = [];
    if (schema.allOf) for (const s of schema.allOf) errors.push(...validate(value, s, root, path));
    for (const key of ['anyOf', 'oneOf']) {
      if (schema[key]) {
        const results = schema[key].map((s) => validate(value, s, root, path));
        if (!results.some((r) => r.length === 0)) {
          const best = results.reduce((a, b) => (b.length < a.length ? b : a));
          errors.push(...(best.length ? best : [{ path, message: 'does not match any allowed form' }]));
        }
      }
    }
    if (schema.type) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      const actual = jsonType(value);
      if (!types.some((t) => t === actual || (t === 'number' && actual === 'integer'))) {
        errors.push({ path, message: `must be ${types.join(' or ')}, not ${actual}` });
        return errors;
      }
    }
    if (schema.const !== undefined && JSON.stringify(schema.const) !== JSON.stringify(value)) {
      errors.push({ path, message: `must be ${JSON.stringify(schema.const)}` });
    }
    if (Array.isArray(schema.enum) && !schema.enum.some((v) => JSON.stringify(v) === JSON.stringify(value))) {
      errors.push({ path, message: `must be one of ${schema.enum.map((v) => JSON.stringify(v)).join(', ')}` });
    }
    if (typeof value === 'number') {
      if (schema.minimum !== undefined && value < schema.minimum) errors.push({ path, message: `must be at least ${schema.minimum}` });
      if (schema.maximum !== undefined && value > schema.maximum) errors.push({ path, message: `must be at most ${schema.maximum}` });
      if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) errors.push({ path, message: `must be more than ${schema.exclusiveMinimum}` });
      if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) errors.push({ path, message: `must be less than ${schema.exclusiveMaximum}` });
    }
    if (typeof value === 'string') {
      const length = [...value].length;
      if (schema.minLength !== undefined && length < schema.minLength) errors.push({ path, message: `must have at least ${schema.minLength} characters` });
      if (schema.maxLength !== undefined && length > schema.maxLength) errors.push({ path, message: `must have at most ${schema.maxLength} characters` });
      if (schema.pattern) {
        try {
          if (!new RegExp(schema.pattern, 'u').test(value)) errors.push({ path, message: `must match ${schema.pattern}` });
        } catch (_) { /* a pattern JavaScript cannot read: the server decides */ }
      }
    }
    if (Array.isArray(value)) {
      if (schema.minItems !== undefined && value.length < schema.minItems) errors.push({ path, message: `must have at least ${schema.minItems} items` });
      if (schema.maxItems !== undefined && value.length > schema.maxItems) errors.push({ path, message: `must have at most ${schema.maxItems} items` });
      if (schema.items !== undefined && !Array.isArray(schema.items)) {
        value.forEach((item, i) => errors.push(...validate(item, schema.items, root, join(path, i))));
      }
    }
    if (jsonType(value) === 'object') {
      for (const name of schema.required || []) {
        if (!(name in value)) errors.push({ path: join(path, name), message: 'is required' });
      }
      const properties = schema.properties || {};
      for (const [name, item] of Object.entries(value)) {
        if (name in properties) errors.push(...validate(item, properties[name], root, join(path, name)));
        else if (schema.additionalProperties === false) errors.push({ path: join(path, name), message: 'is not a field of this job' });
        else if (schema.additionalProperties !== undefined) errors.push(...validate(item, schema.additionalProperties, root, join(path, name)));
      }
    }
    return errors;
  }

  /** The top-level field a path or a serde message is about. */
  function fieldOf(path, message) {
    const head = (path || '').split(/[.[]/)[0];
    if (head && head !== '.') return head;
    const named = /(?:missing|unknown|duplicate) field `([^`]+)`/.exec(message || '');
    return named ? named[1] : null;
  }

  function clearErrors() {
    for (const el of document.querySelectorAll('#job-form .field-error')) el.textContent = '';
    for (const el of document.querySelectorAll('#job-form [aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  /** Shows errors next to their fields (or under the JSON editor); returns the first control in error. */
  function showErrors(state, errors) {
    clearErrors();
    let first = null;
    const general = [];
    for (const error of errors) {
      const name = error.path === '#extra' ? '#extra' : fieldOf(error.path, error.message);
      const field = state.fields.find((f) => f.name === name);
      const target = state.mode === 'form' && name === '#extra' && state.extras ? state.extras
        : state.mode === 'form' && field ? field : null;
      const text = error.path && error.path !== '.' && error.path !== '#extra' && error.path !== name
        ? `${error.path}: ${error.message}` : error.message;
      if (target) {
        const slot = target.field.querySelector('.field-error');
        slot.append(h('p', {}, text));
        target.control.setAttribute('aria-invalid', 'true');
        first = first || target.control;
      } else {
        general.push(error.path && error.path !== '.' ? `${error.path}: ${error.message}` : error.message);
      }
    }
    if (general.length) {
      const slot = $('json-error');
      slot.replaceChildren(...general.map((t) => h('p', {}, t)));
      if (state.mode === 'json') {
        $('json-input').setAttribute('aria-invalid', 'true');
        first = first || $('json-input');
      } else {
        // A payload error the form cannot place: show it under the form too.
        $('run-result').append(h('div', { class: 'field-error' }, general.map((t) => h('p', {}, t))));
      }
    }
    return first;
  }

  function setMode(mode) {
    if (!current) return;
    clearErrors();
    if (mode === 'json' && current.mode === 'form') {
      const errors = [];
      const payload = readForm(current, errors);
      $('json-input').value = pretty(payload);
    } else if (mode === 'form' && current.mode === 'json') {
      let payload;
      try {
        payload = JSON.parse($('json-input').value || '{}');
      } catch (e) {
        showErrors(current, [{ path: '', message: `The JSON is not valid (${e.message}); fix it to go back to the form.` }]);
        return;
      }
      if (!payload || typeof payload !== 'object' || Array.isArray(payload)) {
        showErrors(current, [{ path: '', message: 'The payload must be a JSON object to go back to the form.' }]);
        return;
      }
      fillForm(current, payload);
    }
    current.mode = mode;
    $('form-fields').hidden = mode !== 'form';
    $('json-editor').hidden = mode !== 'json';
    $('mode-form').setAttribute('aria-pressed', String(mode === 'form'));
    $('mode-json').setAttribute('aria-pressed', String(mode === 'json'));
  }

  function applyTriggerPermission() {
    const denied = whoami && !whoami.can_trigger;
    const run = $('run-button');
    const note = $('trigger-denied');
    run.disabled = !whoami || denied;
    note.hidden = !denied;
    if (denied) {
      note.textContent = `You cannot run jobs: your session lacks the permission ${whoami.trigger_permission}.`;
      run.setAttribute('aria-describedby', 'trigger-denied');
    } else {
      run.removeAttribute('aria-describedby');
    }
    const again = $('run-again');
    if (again && shownRun) again.hidden = !canRunAgain(shownRun);
  }

  function statusBadge(status) {
    return h('span', { class: `badge status-${status}` }, status.replace(/_/g, ' '));
  }

  /** Renders the answer of `POST /jobs/{name}`. */
  function renderRunResult(target, result) {
    const b = result.body || {};
    const parts = [];
    if (result.ok) {
      parts.push(h('p', { class: 'result-head' }, statusBadge(b.status || 'succeeded'),
        h('span', { class: 'duration' }, `${b.duration_ms} ms`), b.run_id ? h('code', { class: 'muted run-id' }, b.run_id) : null));
      parts.push(h('h4', {}, 'Output'), h('pre', { class: 'output', tabindex: '0' }, pretty(b.output)));
    } else if (b.run_id) {
      parts.push(h('p', { class: 'result-head' }, statusBadge(b.status || 'failed'),
        b.duration_ms !== undefined ? h('span', { class: 'duration' }, `${b.duration_ms} ms`) : null,
        h('code', { class: 'muted run-id' }, b.run_id)));
      parts.push(h('p', { class: 'error' }, `${b.error || 'error'}: ${b.message || ''} (HTTP ${result.status})`));
    } else {
      parts.push(h('p', { class: 'result-head' }, statusBadge(b.error || 'error')),
        h('p', { class: 'error' }, describeFailure(result)));
      if (b.path) parts.push(h('p', { class: 'error' }, 'Field: ', h('code', {}, b.path), b.detail ? ` — ${b.detail}` : ''));
    }
    target.replaceChildren(h('div', { class: result.ok ? 'result-ok' : 'result-failed', id: target.id === 'run-result' ? 'run-outcome' : undefined }, parts));
  }

  async function runJob(event) {
    event.preventDefault();
    if (!current || $('run-button').disabled) return;
    clearErrors();
    $('run-result').replaceChildren();
    const errors = [];
    let payload;
    if (current.mode === 'json') {
      try {
        payload = JSON.parse($('json-input').value || '{}');
      } catch (e) {
        errors.push({ path: '', message: `not valid JSON (${e.message})` });
      }
    } else {
      payload = readForm(current, errors);
    }
    if (!errors.length) errors.push(...validate(payload, current.root, current.root));
    if (errors.length) {
      const first = showErrors(current, errors);
      $('run-result').prepend(h('p', { class: 'error', id: 'run-blocked' }, 'Not sent: the payload does not fit the job\u2019s schema.'));
      if (first) first.focus();
      return;
    }
    // One key per attempt to run this payload: a retry of the same request
    // after a network failure would reuse it.
    const body = JSON.stringify(payload);
    if (!current.key || current.keyBody !== body) {
      current.key = randomKey();
      current.keyBody = body;
    }
    const button = $('run-button');
    button.disabled = true;
    button.textContent = 'Running…';
    $('run-result').replaceChildren(h('p', { class: 'notice' }, `Running ${current.job.name}…`));
    inFlight += 1;
    scheduleLive(1000);
    let result;
    try {
      result = await api(`/jobs/${encodeURIComponent(current.job.name)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': current.key },
        body,
      });
    } finally {
      inFlight -= 1;
      button.textContent = 'Run';
      applyTriggerPermission();
    }
    if (result.status !== 0) current.key = null;
    renderRunResult($('run-result'), result);
    $('run-result').scrollIntoView({ block: 'nearest' });
    if (result.status === 422 && result.body?.path !== undefined) {
      const first = showErrors(current, [{ path: result.body.path, message: result.body.detail || result.body.message }]);
      if (first) first.focus();
    }
    loadRuns();
  }

  // ------------------------------------------------------------------
  // Runs.
  // ------------------------------------------------------------------

  let runs = [];
  let nextCursor = null;
  let inFlight = 0;
  let liveTimer = null;
  let shownRun = null;
  let runsAvailable = true;

  function filters() {
    const params = new URLSearchParams();
    for (const name of ['job', 'status', 'source']) {
      const value = $(`filter-${name}`).value;
      if (value) params.set(name, value);
    }
    const messageId = $('filter-message-id').value.trim();
    if (messageId) params.set('message_id', messageId);
    params.set('limit', '25');
    return params;
  }

  async function loadRuns(append) {
    if (!auth || $('app').hidden) return;
    const params = filters();
    if (append && nextCursor) params.set('cursor', nextCursor);
    const status = $('runs-status');
    const result = await api(`/runs?${params}`);
    if (!result.ok) {
      runsAvailable = result.status !== 404;
      status.className = result.status === 404 ? 'notice' : 'notice error';
      status.textContent = result.status === 404
        ? 'Run history is not available on this server yet (GET /runs answered 404).'
        : `Could not load runs (${describeFailure(result)}).`;
      if (!append) renderRuns([]);
      scheduleLive();
      return;
    }
    runsAvailable = true;
    const page = result.body.runs || [];
    runs = append ? runs.concat(page) : page;
    nextCursor = result.body.next_cursor || null;
    status.className = 'notice';
    status.textContent = runs.length ? '' : 'No runs match.';
    renderRuns(runs);
    scheduleLive();
  }

  /** A local time; in the runs list, today's runs show the time only. */
  function formatTime(text, short) {
    if (!text) return '';
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return text;
    if (short && date.toDateString() === new Date().toDateString()) {
      return date.toLocaleTimeString(undefined, { timeStyle: 'medium' });
    }
    return date.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  }

  function renderRuns(list) {
    $('runs-body').replaceChildren(...list.map((run) => h('tr', { 'data-run': run.run_id, 'data-status': run.status },
      h('td', { 'data-label': 'Job' }, h('button', {
        type: 'button',
        class: 'link',
        'aria-label': `${run.job}, ${run.status}, started ${formatTime(run.started_at)}: details`,
        onclick: () => openRun(run.run_id),
      }, run.job)),
      h('td', { 'data-label': 'Status' }, statusBadge(run.status)),
      h('td', { 'data-label': 'Source' }, run.source),
      h('td', { 'data-label': 'Started', class: 'nowrap' }, h('time', { datetime: run.started_at, title: formatTime(run.started_at) }, formatTime(run.started_at, true))),
      h('td', { 'data-label': 'Duration', class: 'nowrap' }, run.duration_ms === null || run.duration_ms === undefined ? '…' : `${run.duration_ms} ms`),
      h('td', { 'data-label': 'By' }, run.principal ? h('code', {}, run.principal.id) : ''))));
    $('runs-more').hidden = !nextCursor;
    $('runs-table').hidden = list.length === 0;
  }

  const FAILED = new Set(['failed_transient', 'failed_permanent', 'dead_lettered', 'cancelled']);
  const DEAD = 'failed_permanent,dead_lettered';

  /** Run control (cancel, re-run) is for people who may trigger jobs. */
  function canControl() {
    return Boolean(whoami?.can_trigger) && whoami?.principal?.kind === 'clerk';
  }

  function canRunAgain(run) {
    return FAILED.has(run.status) && run.payload !== null && run.payload !== undefined && !run.payload_truncated && canControl() && jobs.some((j) => j.name === run.job);
  }

  function canCancel(run) {
    return run.status === 'running' && !run.cancel_requested_at && canControl();
  }

  function block(title, value, note) {
    return [h('h3', {}, title), note ? h('p', { class: 'muted' }, note) : null,
      value === null || value === undefined ? h('p', { class: 'muted' }, 'none') : h('pre', { class: 'output', tabindex: '0' }, typeof value === 'string' ? value : pretty(value))]
      .filter(Boolean);
  }

  function renderRunDetail(run) {
    shownRun = run;
    $('run-detail-title').textContent = `Run of ${run.job}`;
    $('run-detail-body').replaceChildren(
      h('p', {}, statusBadge(run.status)),
      dl([
        ['Run', h('code', {}, run.run_id)],
        ['Source', run.source],
        ['By', run.principal ? h('span', {}, `${run.principal.kind} `, h('code', {}, run.principal.id)) : null],
        ['Attempt', run.attempt],
        ['Started', formatTime(run.started_at)],
        ['Finished', formatTime(run.finished_at)],
        ['Duration', run.duration_ms === null || run.duration_ms === undefined ? null : `${run.duration_ms} ms`],
        run.message_id ? ['Message', h('code', {}, run.message_id)] : null,
        run.subscription ? ['Subscription', h('code', {}, run.subscription)] : null,
        run.idempotency_key ? ['Idempotency key', h('code', {}, run.idempotency_key)] : null,
        run.rerun_of ? ['Re-run of', h('button', { type: 'button', class: 'link', onclick: () => openRun(run.rerun_of) }, h('code', {}, run.rerun_of))] : null,
        run.cancel_requested_at ? ['Cancel asked', h('span', {}, `${formatTime(run.cancel_requested_at)} by `, h('code', {}, run.cancelled_by ? run.cancelled_by.id : '?'))] : null,
      ]),
      ...block('Payload', run.payload, run.payload_truncated ? 'Truncated: too large to keep whole, so it cannot be run again from here.' : null),
      ...block('Output', run.output),
      ...block('Error', run.error),
    );
    $('run-again').hidden = !canRunAgain(run);
    $('run-cancel').hidden = !canCancel(run);
  }

  async function openRun(id) {
    const dialog = $('run-detail');
    $('run-again-result').replaceChildren();
    const cached = runs.find((r) => r.run_id === id);
    if (cached) renderRunDetail(cached);
    if (!dialog.open) dialog.showModal();
    const result = await api(`/runs/${encodeURIComponent(id)}`);
    if (result.ok) renderRunDetail(result.body);
    else if (!cached) $('run-detail-body').replaceChildren(h('p', { class: 'error' }, `Could not load the run (${describeFailure(result)}).`));
  }

  async function runAgain() {
    if (!shownRun || !canRunAgain(shownRun)) return;
    const button = $('run-again');
    button.disabled = true;
    const target = $('run-again-result');
    target.replaceChildren(h('p', { class: 'notice' }, `Running ${shownRun.job} again…`));
    inFlight += 1;
    scheduleLive(1000);
    let result;
    try {
      // The recorded payload, run again on the server: the new run carries rerun_of.
      result = await api(`/runs/${encodeURIComponent(shownRun.run_id)}/rerun`, { method: 'POST' });
    } finally {
      inFlight -= 1;
      button.disabled = false;
    }
    renderRunResult(target, result);
    loadRuns();
  }

  async function cancelRun() {
    if (!shownRun || !canCancel(shownRun)) return;
    const run = shownRun;
    const button = $('run-cancel');
    button.disabled = true;
    const target = $('run-again-result');
    let result;
    try {
      result = await api(`/runs/${encodeURIComponent(run.run_id)}/cancel`, { method: 'POST' });
    } finally {
      button.disabled = false;
    }
    if (result.ok) {
      target.replaceChildren(h('p', { class: 'notice' }, 'Cancel requested: the run stops within a second.'));
      renderRunDetail(result.body);
      // The run ends cancelled shortly: show it when it has.
      setTimeout(() => { if (shownRun && shownRun.run_id === run.run_id) openRun(run.run_id); }, 1500);
    } else {
      target.replaceChildren(h('p', { class: 'error' }, `Could not cancel the run (${describeFailure(result)}).`));
    }
    loadRuns();
  }

  // ------------------------------------------------------------------
  // Dead letters: runs that failed for good or were dead-lettered.
  // ------------------------------------------------------------------

  let deadRuns = [];
  const selected = new Set();

  async function loadDead() {
    if (!auth || $('app').hidden) return;
    const result = await api(`/runs?status=${DEAD}&limit=50`);
    const status = $('dead-status');
    if (!result.ok) {
      status.className = 'notice error';
      status.textContent = `Could not load dead letters (${describeFailure(result)}).`;
      deadRuns = [];
    } else {
      deadRuns = result.body.runs || [];
      status.className = 'notice';
      status.textContent = deadRuns.length ? '' : 'No run failed for good or was dead-lettered.';
    }
    for (const id of [...selected]) if (!deadRuns.some((r) => r.run_id === id)) selected.delete(id);
    renderDead();
  }

  function renderDead() {
    $('dead-body').replaceChildren(...deadRuns.map((run) => h('tr', { 'data-run': run.run_id, 'data-status': run.status },
      h('td', {}, h('input', {
        type: 'checkbox',
        'aria-label': `Select ${run.job}, started ${formatTime(run.started_at)}`,
        checked: selected.has(run.run_id),
        onchange: (e) => { if (e.target.checked) selected.add(run.run_id); else selected.delete(run.run_id); updateDeadActions(); },
      })),
      h('td', { 'data-label': 'Job' }, h('button', { type: 'button', class: 'link', onclick: () => openRun(run.run_id) }, run.job)),
      h('td', { 'data-label': 'Status' }, statusBadge(run.status)),
      h('td', { 'data-label': 'Source' }, run.source),
      h('td', { 'data-label': 'Started', class: 'nowrap' }, formatTime(run.started_at, true)),
      h('td', { 'data-label': 'Error' }, run.error_kind || ''))));
    $('dead-table').hidden = deadRuns.length === 0;
    $('dead-select-all').checked = deadRuns.length > 0 && deadRuns.every((r) => selected.has(r.run_id));
    updateDeadActions();
  }

  function updateDeadActions() {
    $('dead-rerun-selected').disabled = !canControl() || selected.size === 0;
    $('dead-rerun-all').disabled = !canControl() || deadRuns.length === 0;
    $('dead-rerun-selected').textContent = selected.size ? `Re-run selected (${selected.size})` : 'Re-run selected';
  }

  async function bulkRerun(filter) {
    const progress = $('dead-progress');
    progress.className = 'notice';
    progress.textContent = 'Starting…';
    const result = await api('/runs/rerun', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(filter),
    });
    if (!result.ok) {
      progress.className = 'notice error';
      progress.textContent = `Could not re-run (${describeFailure(result)}).`;
      return;
    }
    selected.clear();
    const { bulk_id: bulkId, matched } = result.body;
    progress.dataset.bulk = bulkId;
    progress.textContent = `Re-running ${matched} run${matched === 1 ? '' : 's'}…`;
    for (;;) {
      const step = await api(`/runs/rerun/${encodeURIComponent(bulkId)}`);
      if (!step.ok) {
        progress.className = 'notice error';
        progress.textContent = `Could not read the progress (${describeFailure(step)}).`;
        return;
      }
      const p = step.body;
      progress.textContent = `${p.finished ? 'Done' : 'Re-running'}: ${p.done} of ${p.matched} (${p.succeeded} succeeded, ${p.failed} failed, ${p.skipped} skipped).`;
      if (p.finished) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    progress.dataset.finished = 'true';
    loadDead();
    loadRuns();
  }

  /** Polls while something runs (a run listed as running, or one of ours in flight). */
  function scheduleLive(delay) {
    clearTimeout(liveTimer);
    liveTimer = null;
    const busy = runsAvailable && (inFlight > 0 || runs.some((r) => r.status === 'running'));
    $('runs-live').hidden = !busy;
    if (busy) liveTimer = setTimeout(() => loadRuns(), delay || 2000);
  }

  function stopLive() {
    clearTimeout(liveTimer);
    liveTimer = null;
  }

  // ------------------------------------------------------------------
  // Start.
  // ------------------------------------------------------------------

  function wire() {
    $('job-form').addEventListener('submit', runJob);
    $('mode-form').addEventListener('click', () => setMode('form'));
    $('mode-json').addEventListener('click', () => setMode('json'));
    $('runs-filters').addEventListener('change', () => loadRuns());
    $('runs-filters').addEventListener('submit', (e) => { e.preventDefault(); loadRuns(); });
    $('runs-refresh').addEventListener('click', () => loadRuns());
    $('runs-more').addEventListener('click', () => loadRuns(true));
    $('run-detail-close').addEventListener('click', () => $('run-detail').close());
    $('run-again').addEventListener('click', runAgain);
    $('run-cancel').addEventListener('click', cancelRun);
    $('dead-refresh').addEventListener('click', () => loadDead());
    $('dead-select-all').addEventListener('change', (e) => {
      for (const run of deadRuns) if (e.target.checked) selected.add(run.run_id); else selected.delete(run.run_id);
      renderDead();
    });
    $('dead-rerun-selected').addEventListener('click', () => bulkRerun({ run_ids: [...selected] }));
    $('dead-rerun-all').addEventListener('click', () => bulkRerun({ status: DEAD.split(','), limit: 200 }));
    $('run-detail').addEventListener('close', () => { shownRun = null; });
    $('filter-message-id').addEventListener('search', () => loadRuns());
    $('overview-refresh').addEventListener('click', () => loadOverview());
    // The last hour moves on: redraw each minute while the page is seen.
    setInterval(() => { if (!document.hidden) loadOverview(); }, 60000);
  }

  async function start() {
    wire();
    try {
      const response = await fetch(`${API}/admin/config.json`, { credentials: 'omit', cache: 'no-store' });
      config = await response.json();
    } catch (e) {
      showBoot(`Could not load the page's configuration (${e.message}).`, true);
      return;
    }
    if (config.sign_in === 'clerk') {
      try {
        await startClerk();
      } catch (e) {
        showBoot(`Clerk failed to start: ${e.message}`, true);
      }
    } else if (config.sign_in === 'dev') {
      auth = devAuth;
      showSignedOut();
    } else {
      showBoot(`Nobody can sign in yet. ${config.reason || ''}`, true);
    }
  }

  start();
})();
