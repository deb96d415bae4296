// The login page: trades a key or the password for a session cookie, then opens the dashboard.
"use strict";

async function logIn(body) {
  const error = document.getElementById("login-error");
  error.hidden = true;
  try {
    const response = await fetch("/admin/api/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    if (response.ok) {
      // The session secret stays in this origin's storage (other ports of this host cannot read it); the
      // cookie alone opens nothing.
      const data = await response.json();
      localStorage.setItem("sy_session_secret", data.csrf_token);
      location.href = "/dashboard";
      return;
    }
    let message = `login failed (HTTP ${response.status})`;
    try {
      const data = await response.json();
      if (data && data.error && data.error.message) message = data.error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    error.textContent = message;
  } catch (e) {
    error.textContent = `cannot reach Switchyard: ${e.message}`;
  }
  error.hidden = false;
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  logIn({ key: document.getElementById("key").value.trim() });
});

document.getElementById("password-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const totp = document.getElementById("totp").value.trim();
  logIn({ password: document.getElementById("password").value, totp: totp || undefined });
});
