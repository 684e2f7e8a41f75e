// Sign in with a username and password (POST /api/v1/auth/login), or with an
// access token (the aggregator's bootstrap EDGEQI_ADMIN_TOKEN, or a token an
// admin handed out). The token lives in sessionStorage: gone with the tab.

import { request, setToken } from '../api.js';
import { h } from '../dom.js';
import { state } from '../state.js';

export function mount(main, ctx) {
  if (state.user) { ctx.navigate('/ui/overview', { replace: true }); return null; }
  const msg = new URLSearchParams(location.search).get('msg');
  const error = h('p', { class: 'form-error', role: 'alert', id: 'login-error' }, msg || '');
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, autofocus: true, 'aria-describedby': 'login-error' });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'login-form', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in to EdgeQI'),
    h('label', { for: 'username' }, 'Username'), user,
    h('label', { for: 'password' }, 'Password'), pass,
    submit, error);

  const tokenInput = h('input', { id: 'access-token', name: 'access_token', type: 'password', autocomplete: 'off', required: true });
  const tokenForm = h('form', { class: 'token-form' },
    h('label', { for: 'access-token' }, 'Access token'), tokenInput,
    h('button', { type: 'submit' }, 'Use token'));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const r = await request('/api/v1/auth/login', {
        method: 'POST', auth: false, body: { username: user.value.trim(), password: pass.value },
      });
      if (r.ok && r.body && r.body.token) {
        setToken(r.body.token);
        if (r.body.expires_at) sessionStorage.setItem('edgeqi.expires', r.body.expires_at);
        pass.value = '';
        ctx.signedIn(r.body.user || { username: user.value.trim(), role: 'viewer' });
        return;
      }
      if (r.status === 404 || r.status === 405) {
        error.textContent = 'This aggregator has no password sign-in; use an access token below.';
      } else if (r.status === 401 || r.status === 403) {
        error.textContent = 'Wrong username or password.';
      } else {
        error.textContent = (r.body && r.body.error && r.body.error.message) || 'Sign-in failed; try again.';
      }
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
    pass.select();
  });

  tokenForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const token = tokenInput.value.trim();
    setToken(token);
    const me = await request('/api/v1/auth/me');
    if (me.ok && me.body) { ctx.signedIn(me.body.user || me.body); return; }
    const probe = await request('/api/v1/nodes');
    if (probe.ok) { ctx.signedIn({ username: 'admin token', role: 'admin' }); return; }
    setToken(null);
    error.textContent = probe.status === 0 ? 'The aggregator cannot be reached.' : 'That token was not accepted.';
  });

  main.append(h('section', { class: 'login' }, form,
    h('details', { class: 'token-login' }, h('summary', {}, 'Sign in with an access token'), tokenForm)));
  user.focus();
  return null;
}
