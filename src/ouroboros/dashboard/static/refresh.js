// Pages that show numbers computed on the server reload themselves every data-refresh seconds.
"use strict";
const every = Number(document.body.dataset.refresh || 0);
if (every > 0) setTimeout(() => location.reload(), every * 1000);
