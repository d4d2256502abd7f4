// servekit: start Swagger UI. The page passes its settings as JSON in data-config (no
// inline script, so the page's Content-Security-Policy can forbid inline scripts).
"use strict";
(function () {
  var element = document.getElementById("swagger-ui");
  var config = JSON.parse(element.dataset.config);
  config.domNode = element;
  config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset];
  window.ui = SwaggerUIBundle(config);
})();
