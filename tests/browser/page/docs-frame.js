'use strict';
document.getElementById('docs').src = new URLSearchParams(window.location.search).get('src');
