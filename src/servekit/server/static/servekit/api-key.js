// servekit: the API key the docs pages send for the OpenAPI document when the server
// asks for one (SERVEKIT_API_KEYS). A browser's navigation cannot send a key, so the
// pages load without one and ask for it here; it is kept for this tab only.
"use strict";
window.servekitApiKey = (function () {
  var STORE = "servekit.apiKey";
  var FORM = "servekit-api-key";

  function get() {
    try {
      return sessionStorage.getItem(STORE);
    } catch (e) {
      return null;
    }
  }

  function headers() {
    var key = get();
    return key ? { "X-API-Key": key } : {};
  }

  // A small form above `element`; the key is stored and the page reloaded with it.
  function ask(element) {
    if (document.getElementById(FORM)) return;
    var form = document.createElement("form");
    form.id = FORM;
    form.style.cssText =
      "font-family: sans-serif; max-width: 46em; margin: 2em auto; padding: 1em 1.5em;" +
      "border: 1px solid #d0d0d0; border-radius: 4px";
    var text = document.createElement("p");
    text.textContent = get()
      ? "The server refused this API key. Enter another one to see its models."
      : "This server needs an API key to show its models and examples. " +
        "It is sent as X-API-Key and kept in this browser tab only.";
    var input = document.createElement("input");
    input.type = "password";
    input.name = "api-key";
    input.placeholder = "API key";
    input.autocomplete = "off";
    var button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Use this key";
    form.append(text, input, " ", button);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      sessionStorage.setItem(STORE, input.value.trim());
      location.reload();
    });
    element.parentNode.insertBefore(form, element);
    input.focus();
  }

  return { get: get, headers: headers, ask: ask };
})();
