// Applies the saved theme before first paint (kept out of index.html so a strict CSP works).
try { const t = localStorage.getItem('fabrik.theme'); if (t) document.documentElement.dataset.theme = t; } catch (e) { /* storage off */ }
