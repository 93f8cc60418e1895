package main

import (
	"net/http"
	"net/http/pprof"
)

// handlePprof serves net/http/pprof under /debug/pprof/ on mux. It is off
// unless --pprof is given: the profiles reveal no identity values, but a
// CPU profile costs the process while it runs, and the admin address may
// be reachable by more people than the operators.
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
