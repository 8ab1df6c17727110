// Client-side callbacks of the dashboard.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  ssah: {
    // Mirror a page's view state into the address bar without rebuilding the page: a reload or a copied
    // link reproduces the view.
    syncUrl: function (view) {
      if (!view) { return window.dash_clientside.no_update; }
      const query = new URLSearchParams();
      Object.keys(view).sort().forEach(function (key) {
        const value = view[key];
        if (value !== null && value !== undefined && value !== "" && !key.startsWith("_")) {
          query.set(key, Array.isArray(value) ? value.join(",") : String(value));
        }
      });
      const search = query.toString();
      const url = window.location.pathname + (search ? "?" + search : "");
      if (url !== window.location.pathname + window.location.search) {
        window.history.replaceState(window.history.state, "", url);
      }
      return search;
    }
  }
});
