// servekit: start Swagger UI. The page passes its settings as JSON in data-config (no
// inline script, so the page's Content-Security-Policy can forbid inline scripts).
// With API keys on, the OpenAPI document needs one: it is fetched with the key of
// api-key.js (asked for on a 401), and "Authorize" starts with that key filled in.
"use strict";
(function () {
  var element = document.getElementById("swagger-ui");
  var config = JSON.parse(element.dataset.config);
  var keys = window.servekitApiKey;
  var spec = new URL(config.url, location.href).href;

  function isSpec(url) {
    return new URL(url, location.href).href === spec;
  }

  config.domNode = element;
  config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset];
  config.requestInterceptor = function (request) {
    if (isSpec(request.url)) Object.assign(request.headers, keys.headers());
    return request;
  };
  config.responseInterceptor = function (response) {
    if (isSpec(response.url) && response.status === 401) keys.ask(element);
    return response;
  };
  config.onComplete = function () {
    var key = keys.get();
    if (key) window.ui.preauthorizeApiKey("APIKeyHeader", key);
  };
  window.ui = SwaggerUIBundle(config);
})();
