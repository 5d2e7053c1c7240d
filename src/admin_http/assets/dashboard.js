// taskbroker dashboard: the only script. A form with data-confirm asks
// before it is sent (purge, redrive all); everything else is plain HTML.
document.addEventListener("submit", function (event) {
  var question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
