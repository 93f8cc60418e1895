package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// The pool metrics follow a real pool: a connection held, an acquire that
// waits for it, one that gives up.
func TestPoolCollector(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(schematest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newPoolCollector(pool))
	value := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
		t.Fatalf("%s not gathered", name)
		return 0
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 8 {
		t.Fatalf("%d series (err %v), want 8", n, err)
	}
	if v := value("groupmatch_db_pool_max_connections"); v != 1 {
		t.Errorf("max connections %v, want 1", v)
	}

	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := value("groupmatch_db_pool_acquired_connections"); v != 1 {
		t.Errorf("acquired %v while one is held, want 1", v)
	}
	empty := value("groupmatch_db_pool_empty_acquires_total") // the first acquire opened the connection
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if c, err := pool.Acquire(short); err == nil {
		c.Release()
		t.Fatal("an acquire from a full pool did not wait")
	}
	if v := value("groupmatch_db_pool_canceled_acquires_total"); v != 1 {
		t.Errorf("canceled acquires %v, want 1", v)
	}
	got := make(chan error, 1)
	go func() {
		c, err := pool.Acquire(ctx)
		if err == nil {
			c.Release()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	held.Release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if v := value("groupmatch_db_pool_acquires_total"); v != 2 {
		t.Errorf("acquires %v, want 2", v)
	}
	if v := value("groupmatch_db_pool_empty_acquires_total"); v != empty+1 {
		t.Errorf("empty acquires %v, want %v (one more waited for the held connection)", v, empty+1)
	}
	if v := value("groupmatch_db_pool_acquire_wait_seconds_total"); v < 0.05 {
		t.Errorf("acquire wait %v s, want >= 0.05 (one waited about 100 ms)", v)
	}
	if v := value("groupmatch_db_pool_acquired_connections"); v != 0 {
		t.Errorf("acquired %v after release, want 0", v)
	}
	if v := value("groupmatch_db_pool_idle_connections") + value("groupmatch_db_pool_total_connections"); v != 2 {
		t.Errorf("idle + total %v, want 1 + 1", v)
	}
}
