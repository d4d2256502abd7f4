// servekit: start ReDoc on the OpenAPI document named by data-spec-url.
"use strict";
(function () {
  var element = document.getElementById("redoc");
  Redoc.init(element.dataset.specUrl, JSON.parse(element.dataset.options), element);
})();
