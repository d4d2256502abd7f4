// servekit: start ReDoc on the OpenAPI document named by data-spec-url, fetched here
// with the key of api-key.js when the server asks for one (a 401 asks the user).
"use strict";
(function () {
  var element = document.getElementById("redoc");
  var keys = window.servekitApiKey;
  var options = JSON.parse(element.dataset.options);
  fetch(element.dataset.specUrl, { headers: keys.headers() }).then(function (response) {
    if (response.status === 401) {
      keys.ask(element);
      return;
    }
    return response.json().then(function (spec) {
      Redoc.init(spec, options, element);
    });
  });
})();
