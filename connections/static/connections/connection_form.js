// Connection form: a filter for the provider select; only the placeholders the chosen provider type needs; only
// the grants it supports, and the rows and buttons of the chosen grant (the page's grant-<layout> class, which the
// template's CSS reads); which URLs must be given (a provider type without URLs of its own); what the connection
// will use (its URLs with the placeholders filled as they are typed, scopes, client authentication, the provider's
// documentation); and the issuer's Discover button. Without JavaScript every placeholder stays visible, the page
// shows the grants, rows and required URLs of what was saved or posted, what a saved connection uses, and saving
// discovers from the issuer.
"use strict";
window.addEventListener("load", function () {
  const provider = document.getElementById("id_provider");
  if (!provider || !provider.dataset.presets) {
    return;
  }
  const presets = JSON.parse(provider.dataset.presets);
  const field = (name) => document.getElementById("id_" + name);
  const grantSelect = field("grant_type");
  const grants = grantSelect && grantSelect.dataset.grants ? JSON.parse(grantSelect.dataset.grants) : {};
  const grantOf = () => grants[grantSelect ? grantSelect.value : ""] || {};
  const URL_FIELDS = ["authorization_url", "token_url", "revocation_url", "device_authorization_url"];

  function placeholderValue(name) {
    const input = document.querySelector('input.placeholder-input[data-placeholder="' + name + '"]');
    return input ? input.value.trim() : "";
  }

  function fill(template) {
    return (template || "").replace(/<([a-z0-9][a-z0-9-]*)>/g, (whole, name) => placeholderValue(name) || whole);
  }

  function showPlaceholders() {
    const wanted = (presets[provider.value] || {}).placeholders || [];
    document.querySelectorAll("input.placeholder-input").forEach(function (input) {
      const row = input.closest(".form-row");
      if (row) {
        row.style.display = wanted.includes(input.dataset.placeholder) ? "" : "none";
      }
    });
  }

  function row(table, label, value) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = label;
    const code = document.createElement("code");
    code.textContent = value;
    tr.append(th);
    tr.insertCell().append(code);
  }

  function redrawPreview() {
    const box = document.querySelector(".field-preset_display .readonly");
    const chosen = presets[provider.value];
    if (!box) {
      return;
    }
    box.replaceChildren();
    if (!chosen) {
      box.textContent = "Choose a provider type to see its URLs, scopes and documentation.";
      return;
    }
    const about = document.createElement("p");
    about.textContent = chosen.description + " ";
    if (chosen.docs_url.startsWith("https://")) {
      const link = document.createElement("a");
      link.href = chosen.docs_url;
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "Documentation";
      about.append(link);
    }
    const table = document.createElement("table");
    const urls = {};
    URL_FIELDS.forEach(function (name) {
      const input = field(name);
      urls[name] = (input && input.value.trim()) || fill(chosen[name]);
      if (input) {
        input.placeholder = fill(chosen[name]);  // what a blank field means, in the field itself
      }
    });
    // client_credentials_scopes null: the default scopes; "": none with that grant
    const grantScopes = grantOf().layout === "app" ? chosen.client_credentials_scopes : null;
    const presetScopes = fill(grantScopes === null ? chosen.default_scopes : grantScopes);
    const scopes = field("scopes");
    if (scopes) {
      scopes.placeholder = presetScopes;
    }
    const auth = field("client_auth_method");
    const authText = auth && auth.value ? auth.options[auth.selectedIndex].text : chosen.client_auth_method;
    if ((grantOf().layout || "code") === "code") {  // the other grants send nobody to it
      row(table, "Authorization URL", urls.authorization_url || "—");
    }
    row(table, "Token URL", urls.token_url || "—");
    row(table, "Revocation URL", urls.revocation_url || "none: tokens are not revoked at the provider");
    if (urls.device_authorization_url) {
      row(table, "Device authorization URL", urls.device_authorization_url);
    }
    if (chosen.refresh_url) {
      row(table, "Refresh URL", fill(chosen.refresh_url));
    }
    row(table, "Scopes", (scopes && scopes.value.trim()) || presetScopes || "none asked for");
    row(table, "Client authentication", authText);
    box.append(about, table);
    if ([...Object.values(urls), presetScopes].some((text) => /<[a-z0-9-]+>/.test(text))) {
      const missing = document.createElement("p");
      missing.className = "preset-missing";
      missing.textContent = "Fill in the <placeholders> above to complete the URLs and scopes.";
      box.append(missing);
    }
  }

  // Only the grants the provider type supports (all of them before one is chosen); the chosen grant is kept while
  // it is supported, else the first supported one is chosen.
  function offerSupportedGrants() {
    if (!grantSelect) {
      return;
    }
    const chosen = presets[provider.value];
    const current = grantSelect.value;
    const offered = Object.keys(grants).filter((grant) => !chosen || chosen.grant_types.includes(grant));
    grantSelect.replaceChildren(...offered.map((grant) => new Option(grants[grant].label, grant)));
    grantSelect.value = offered.includes(current) ? current : offered[0] || "";
  }

  // The rows and buttons of the grant (the template's CSS hides by the body's grant-<layout> class), the primary
  // button, and the URLs the connection must give because the provider type has none (server: ConnectionForm).
  function showGrant() {
    if (!grantSelect) {
      return;  // the page's class stays the server's
    }
    const grant = grantOf();
    const layout = grant.layout || "code";
    document.body.classList.remove("grant-app", "grant-code", "grant-device");
    document.body.classList.add("grant-" + layout);
    showSigningRows();
    const test = document.getElementById("save-and-test");
    const connect = document.getElementById("save-and-connect");
    if (test && connect) {
      test.classList.toggle("default", layout === "app");
      connect.classList.toggle("default", layout !== "app");
    }
    const chosen = presets[provider.value];
    URL_FIELDS.forEach(function (name) {
      const input = field(name);
      const label = document.querySelector('label[for="id_' + name + '"]');
      const help = document.querySelector("#id_" + name + "_helptext > div");
      if (!input || !label || !help) {
        return;
      }
      const required = Boolean(chosen) && (grant.urls_required || []).includes(name) && !chosen[name];
      label.classList.toggle("required", required);
      help.textContent = required ? input.dataset.requiredHelp : input.dataset.optionalHelp;
    });
  }

  // The private key, its ID and the JWT subject: shown for the JWT Bearer grant, and the key and its ID where the
  // client authenticates with private_key_jwt (its own choice, else the provider type's), as ConnectionForm.signing.
  function showSigningRows() {
    const auth = field("client_auth_method");
    const chosen = presets[provider.value];
    const method = (auth && auth.value) || (chosen ? chosen.client_auth_method_code : "");
    const grant = grantSelect ? grantSelect.value : "";
    const signing = grant === "jwt_bearer" ? "jwt" : method === "private_key_jwt" ? "key" : "none";
    document.body.classList.remove("signing-jwt", "signing-key", "signing-none");
    document.body.classList.add("signing-" + signing);
  }

  function addProviderFilter() {
    const filter = document.createElement("input");
    filter.type = "search";
    filter.className = "provider-filter";
    filter.placeholder = "Filter provider types";
    filter.setAttribute("aria-label", "Filter provider types");
    provider.before(filter);
    const original = Array.from(provider.children).map((node) => node.cloneNode(true));
    filter.addEventListener("input", function () {
      const words = filter.value.trim().toLowerCase();
      const selected = provider.value;
      const keep = (option, group) =>
        !words || option.value === selected || (option.textContent + " " + group).toLowerCase().includes(words);
      provider.replaceChildren();
      original.forEach(function (node) {
        if (node.tagName !== "OPTGROUP") {
          provider.append(node.cloneNode(true));
          return;
        }
        const group = node.cloneNode(false);
        Array.from(node.children).forEach(function (option) {
          if (keep(option, node.label)) {
            group.append(option.cloneNode(true));
          }
        });
        if (group.children.length) {
          provider.append(group);
        }
      });
      provider.value = selected;
    });
  }

  function addDiscoverButton() {
    const issuer = field("issuer");
    if (!issuer || !issuer.dataset.discoverUrl) {
      return;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.id = "discover-button";
    button.textContent = "Discover";
    const result = document.createElement("div");
    result.className = "help discover-result";
    result.setAttribute("role", "status");
    issuer.after(button);
    (issuer.closest(".flex-container") || button).after(result);  // below the field, not squeezed beside it
    button.addEventListener("click", async function () {
      const body = new FormData();
      body.append("issuer", issuer.value);
      body.append("provider", provider.value);
      const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
      result.classList.remove("discover-error");
      result.textContent = "Reading the issuer's discovery document…";
      let response, answer;
      try {
        response = await fetch(issuer.dataset.discoverUrl, {
          method: "POST", body: body, headers: {"X-CSRFToken": csrf}, credentials: "same-origin",
        });
        answer = await response.json();
      } catch (error) {
        result.classList.add("discover-error");
        result.textContent = "Control Room did not answer: " + error.message;
        return;
      }
      if (!response.ok) {
        result.classList.add("discover-error");
        result.textContent = answer.detail;
        return;
      }
      Object.entries(answer.urls).forEach(function ([name, url]) {
        const input = field(name);
        if (input && !input.value.trim()) {
          input.value = url;
        }
      });
      const auth = field("client_auth_method");
      if (auth && !auth.value && answer.client_auth_method) {
        auth.value = answer.client_auth_method;
      }
      let text = "Discovered: " + answer.summary + " Blank fields were filled in; what you typed was kept.";
      const grant = field("grant_type");
      if (grant && grant.value === "authorization_code" && (answer.pkce_methods || []).includes("S256")) {
        text += " It supports PKCE (S256): Authorization Code with PKCE is the safer choice.";
      }
      result.textContent = text;
      redrawPreview();
    });
  }

  addProviderFilter();
  addDiscoverButton();
  provider.addEventListener("change", function () {
    showPlaceholders();
    offerSupportedGrants();
    showGrant();
    redrawPreview();
  });
  if (grantSelect) {
    grantSelect.addEventListener("change", showGrant);
  }
  document.querySelectorAll("input.placeholder-input").forEach((input) => input.addEventListener("input", redrawPreview));
  [...URL_FIELDS, "scopes"].forEach((name) => field(name) && field(name).addEventListener("input", redrawPreview));
  ["grant_type", "client_auth_method"].forEach((name) => field(name) && field(name).addEventListener("change", redrawPreview));
  if (field("client_auth_method")) {
    field("client_auth_method").addEventListener("change", showSigningRows);
  }
  showPlaceholders();
  offerSupportedGrants();
  showGrant();
  redrawPreview();
});
