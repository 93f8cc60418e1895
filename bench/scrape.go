package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profile takes a CPU profile of every process that serves pprof, all at
// once, after letting the run warm up.
func (s *system) profile(ctx context.Context, dir string, d time.Duration, stderr io.Writer) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(3 * time.Second):
	}
	var wg sync.WaitGroup
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		wg.Go(func() {
			u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", p.admin, int(d.Seconds()))
			if err := fetchTo(ctx, u, filepath.Join(dir, p.Name()+".cpu.pprof"), d+30*time.Second); err != nil {
				fmt.Fprintf(stderr, "bench: CPU profile of %s: %v\n", p.Name(), err)
			}
			// The heap in the middle of the run, when backlogs are largest.
			if err := fetchTo(ctx, p.admin+"/debug/pprof/heap", filepath.Join(dir, p.Name()+".heap-mid.pprof"), 30*time.Second); err != nil {
				fmt.Fprintf(stderr, "bench: heap profile of %s: %v\n", p.Name(), err)
			}
		})
	}
	wg.Wait()
}

// chunks reads the matcher's and the sink's chunk statistics from the
// processes' metrics.
func (s *system) chunks(ctx context.Context) map[string]StageChunks {
	out := map[string]StageChunks{}
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		m, err := scrapeMetrics(ctx, p.admin+"/metrics")
		if err != nil {
			continue
		}
		for _, st := range []string{stageMatcher, stageSink} {
			if c, ok := ChunksOf(m, st); ok {
				out[st] = c
			}
		}
	}
	return out
}

// scrapeMetrics reads a process's /metrics at u, with ParseMetrics.
func scrapeMetrics(ctx context.Context, u string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return ParseMetrics(resp.Body)
}

// heapProfiles saves every process's heap profile.
func (s *system) heapProfiles(ctx context.Context, dir string, stderr io.Writer) {
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		if err := fetchTo(ctx, p.admin+"/debug/pprof/heap", filepath.Join(dir, p.Name()+".heap.pprof"), 30*time.Second); err != nil {
			fmt.Fprintf(stderr, "bench: heap profile of %s: %v\n", p.Name(), err)
		}
	}
}

// fetchTo saves the body of u, a pprof endpoint, to path.
func fetchTo(ctx context.Context, u, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d (is --pprof on?)", resp.StatusCode)
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
