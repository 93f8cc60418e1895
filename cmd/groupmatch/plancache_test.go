package main

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The stages plan every statement for its arrays unless the database URL
// says otherwise.
func TestPlanCacheMode(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"postgres://postgres@127.0.0.1:5432/groupmatch?sslmode=disable", "force_custom_plan"},
		{"postgres://postgres@127.0.0.1:5432/groupmatch?sslmode=disable&plan_cache_mode=auto", "auto"},
	} {
		cfg, err := pgxpool.ParseConfig(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		setPlanCacheMode(cfg.ConnConfig.RuntimeParams)
		if got := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; got != tt.want {
			t.Errorf("%s: plan_cache_mode %q, want %q", tt.url, got, tt.want)
		}
	}
}
