package bench

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	valid := DefaultConfig()
	valid.DatabaseURL, valid.Executable = "postgres://127.0.0.1/x", "/bin/groupmatch"
	if err := valid.Validate(); err != nil {
		t.Fatalf("DefaultConfig with a database and an executable: %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"via", func(c *Config) { c.Via = "grpc" }, "--via must be http or kafka"},
		{"nothing", func(c *Config) { c.Pipeline = false }, "nothing to do"},
		{"target and single", func(c *Config) { c.Target, c.Single = "http://x", true }, "exclude each other"},
		{"stage", func(c *Config) { c.Stage = "sink" }, "--stage must be matcher"},
		{"instances", func(c *Config) { c.Instances = 0 }, "--instances must be at least 1"},
		{"neighbour interval", func(c *Config) { c.Neighbour, c.NeighbourInterval = true, 0 }, "--neighbour-interval must be positive"},
		{"neighbour tenant", func(c *Config) { c.Neighbour, c.NeighbourTenant = true, "bench" }, "--neighbour-tenant must differ"},
		{"neighbour directory", func(c *Config) { c.Neighbour, c.NeighbourCustomers = true, 10 }, "(of the neighbour)"},
		{"tenant rate", func(c *Config) { c.TenantRate = -1 }, "--tenant-rate must be at least 0"},
		{"database", func(c *Config) { c.DatabaseURL = "" }, "--database-url is required"},
		{"executable", func(c *Config) { c.Executable = "" }, "no groupmatch executable"},
		{"workload", func(c *Config) { c.Workload.BatchSize = 501 }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: %v, want an error saying %q", err, tt.want)
			}
		})
	}
	c := valid
	c.Target, c.Executable = "http://127.0.0.1:8080", ""
	if err := c.Validate(); err != nil {
		t.Errorf("a --target needs no executable: %v", err)
	}
}

func TestStageEnv(t *testing.T) {
	c := DefaultConfig()
	c.TenantRate = 12.5
	if got := c.StageEnv(); len(got) != 1 || got[0] != "TENANT_RATE=12.5" {
		t.Errorf("StageEnv %v", got)
	}
}
