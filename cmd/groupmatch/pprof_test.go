package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestPprofRoutes(t *testing.T) {
	mux := http.NewServeMux()
	handlePprof(mux)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d", path, rec.Code)
		}
	}
}
