/* The tracking page's behaviour, loaded as a file so that the page allows no inline script.
   What it needs comes from the page: #live (the tracking number, the last sequence shown and
   whether the state is final) and the review form's token. Without JavaScript the page simply
   stays as it was rendered. */
(function () {
  "use strict";

  /* Sends the review form to the API with the token from the delivery email. */
  function bindReviewForm() {
    var form = document.getElementById("review-form");
    if (!form || form.dataset.bound) return;
    form.dataset.bound = "true";
    var result = document.getElementById("review-result");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var comment = form.elements.comment.value.trim();
      var body = { token: form.dataset.token, rating: Number(form.elements.rating.value) };
      if (comment) body.comment = comment;
      fetch("/track/" + encodeURIComponent(form.dataset.trackingNumber) + "/review", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body)
      }).then(function (response) {
        if (response.status === 201) { result.textContent = "Thank you for your review!"; form.querySelector("button").disabled = true; }
        else if (response.status === 409) { result.textContent = "This delivery has already been reviewed. Thank you!"; }
        else { result.textContent = "Sorry, the review could not be sent; the link may have expired."; }
      }).catch(function () { result.textContent = "Sorry, the review could not be sent; try again."; });
    });
  }

  /* Live updates: when the parcel moves, fetch this page again and swap in its content. */
  function followLiveUpdates() {
    var live = document.getElementById("live");
    if (!live || live.dataset.final === "true") return;
    if (!window.EventSource || !window.fetch || !window.DOMParser) return;
    var shown = Number(live.dataset.sequence);
    var source = new EventSource("/track/" + encodeURIComponent(live.dataset.trackingNumber) + "/stream");
    source.addEventListener("timeline", function (event) {
      var sequence = Number(event.lastEventId);
      if (!(sequence > shown)) return;
      shown = sequence;
      fetch(window.location.href, { headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : Promise.reject(); })
        .then(function (html) {
          var next = new DOMParser().parseFromString(html, "text/html");
          document.getElementById("main").replaceWith(next.getElementById("main"));
          document.title = next.title;
          bindReviewForm();
          var state = document.getElementById("live");
          if (!state || state.dataset.final === "true") source.close();  /* nothing follows */
        })
        .catch(function () { /* keep what is shown; the next event tries again */ });
    });
  }

  bindReviewForm();
  followLiveUpdates();
})();
