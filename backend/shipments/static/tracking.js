/* The tracking page's behaviour, loaded as a file so that the page allows no inline script.
   What it needs comes from the page: each <time> (its moment, and data-show: how to write it),
   #live (the tracking number, the last sequence shown and whether the state is final) and the
   review form's token. Without JavaScript the page stays as it was rendered, in UTC. */
(function () {
  "use strict";

  var FINAL = ["delivered", "cancelled", "returned"];
  var NO_MORE_UPDATES = "Nothing more will change here, so this page has stopped updating.";

  /* The page is in English: the reader's English conventions (en-US, en-GB...) where the
     browser has them, plain English otherwise; always the reader's own time zone. */
  function englishLocales() {
    var preferred = navigator.languages || [navigator.language];
    var locales = [];
    for (var i = 0; i < preferred.length; i++) {
      if (/^en(-|$)/i.test(preferred[i] || "")) locales.push(preferred[i]);
    }
    locales.push("en");
    return locales;
  }

  var FORMATS = {
    /* "Tue, Mar 10, 2026, 11:30 AM GMT+9": a timeline entry. */
    moment: { weekday: "short", day: "numeric", month: "short", year: "numeric",
              hour: "numeric", minute: "2-digit", timeZoneName: "short" },
    /* "Tuesday, March 10": a day (the year only when it is not this one). */
    day: { weekday: "long", day: "numeric", month: "long" },
    /* "11:30 AM GMT+9". */
    time: { hour: "numeric", minute: "2-digit", timeZoneName: "short" }
  };

  function localDayNumber(moment) {
    return Math.round(Date.UTC(moment.getFullYear(), moment.getMonth(), moment.getDate()) / 86400000);
  }

  /* Rewrites the times under `root` in the reader's time zone; the UTC text stays as a tooltip. */
  function showLocalTimes(root) {
    if (!window.Intl || !Intl.DateTimeFormat) return false;
    var locales = englishLocales();
    var now = new Date();
    var times = root.querySelectorAll("time[data-show]");
    for (var i = 0; i < times.length; i++) {
      var element = times[i];
      var moment = new Date(element.getAttribute("datetime"));
      var format = FORMATS[element.dataset.show];
      if (isNaN(moment.getTime()) || !format) continue;
      if (element.dataset.show === "day" && moment.getFullYear() !== now.getFullYear()) {
        format = Object.assign({ year: "numeric" }, format);
      }
      if (!element.title) element.title = element.textContent.trim();
      element.textContent = new Intl.DateTimeFormat(locales, format).format(moment);
    }
    /* "(tomorrow)", "(in 3 days)": counted in the reader's days, not UTC's. */
    if (Intl.RelativeTimeFormat) {
      var relative = new Intl.RelativeTimeFormat(locales, { numeric: "auto" });
      var spans = root.querySelectorAll("[data-days-until]");
      for (var j = 0; j < spans.length; j++) {
        var day = new Date(spans[j].dataset.daysUntil);
        if (isNaN(day.getTime())) continue;
        var days = localDayNumber(day) - localDayNumber(now);
        spans[j].textContent = "(" + relative.format(days, "day") + ")";
      }
    }
    return true;
  }

  function sayTimesAreLocal() {
    var note = document.getElementById("time-note");
    if (!note) return;
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    note.textContent = "Times are in your time zone" + (zone ? " (" + zone.replace(/_/g, " ") + ")" : "") + ".";
  }

  function showResult(result, state, message) {
    result.dataset.state = state;
    result.textContent = message;
  }

  /* Sends the review form to the API with the token from the delivery email. */
  function bindReviewForm() {
    var form = document.getElementById("review-form");
    if (!form || form.dataset.bound) return;
    form.dataset.bound = "true";
    var result = document.getElementById("review-result");
    var button = form.querySelector("button");
    function finish() {
      for (var i = 0; i < form.elements.length; i++) form.elements[i].disabled = true;
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var comment = form.elements.comment.value.trim();
      var body = { token: form.dataset.token, rating: Number(form.elements.rating.value) };
      if (comment) body.comment = comment;
      button.disabled = true;
      delete result.dataset.state;
      result.textContent = "Sending your review…";
      fetch("/track/" + encodeURIComponent(form.dataset.trackingNumber) + "/review", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body)
      }).then(function (response) {
        button.disabled = false;
        if (response.status === 201) {
          showResult(result, "success", "Thank you for your review!");
          finish();
        } else if (response.status === 409) {
          showResult(result, "success", "This delivery has already been reviewed. Thank you!");
          finish();
        } else if (response.status === 400 || response.status === 404) {
          showResult(result, "error", "Sorry, this review link is not valid any more, so the review could not be sent.");
        } else if (response.status === 422) {
          showResult(result, "error", "Please choose from 1 to 5 stars, and keep the comment under 1000 characters.");
        } else {
          showResult(result, "error", "Sorry, the review could not be sent. Please try again in a moment.");
        }
      }).catch(function () {
        button.disabled = false;
        showResult(result, "error", "Sorry, the review could not be sent. Check your connection and try again.");
      });
    });
  }

  /* Once the shipment is final nothing more comes: stop listening and stop promising updates. */
  function stopFollowing(source) {
    source.close();
    var note = document.getElementById("live-note");
    if (note) note.textContent = NO_MORE_UPDATES;
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
      var update = null;
      try { update = JSON.parse(event.data); } catch (error) { /* the page fetch still shows it */ }
      if (update && FINAL.indexOf(update.status) !== -1) stopFollowing(source);
      fetch(window.location.href, { headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : Promise.reject(); })
        .then(function (html) {
          var next = new DOMParser().parseFromString(html, "text/html");
          var main = next.getElementById("main");
          showLocalTimes(main);  /* before it is shown: no flash of UTC */
          document.getElementById("main").replaceWith(main);
          document.title = next.title;
          bindReviewForm();
          var state = document.getElementById("live");
          if (!state || state.dataset.final === "true") stopFollowing(source);
        })
        .catch(function () { /* keep what is shown; the next event tries again */ });
    });
  }

  if (showLocalTimes(document)) sayTimesAreLocal();
  bindReviewForm();
  followLiveUpdates();
})();
