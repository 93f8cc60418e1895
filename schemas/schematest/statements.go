package schematest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// AllTenants marks a statement that reads several tenants' rows on
// purpose (the relay's and the deadline's sweeps, a metric): it may scan a
// tenant table without naming a tenant, but must neither write nor lock.
const AllTenants = "/* all tenants */"

// StatementLog is a pgx tracer (pgx.QueryTracer and pgx.BatchTracer) that
// keeps every distinct SQL text sent, with the arguments of its first use,
// for TenantFilterViolations. It is safe for concurrent use.
type StatementLog struct {
	mu    sync.Mutex
	args  map[string][]any
	order []string
}

var (
	_ pgx.QueryTracer = (*StatementLog)(nil)
	_ pgx.BatchTracer = (*StatementLog)(nil)
)

func (l *StatementLog) add(sql string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.args == nil {
		l.args = make(map[string][]any)
	}
	if _, ok := l.args[sql]; !ok {
		l.args[sql] = slices.Clone(args)
		l.order = append(l.order, sql)
	}
}

// TraceQueryStart records the statement.
func (l *StatementLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	l.add(data.SQL, data.Args)
	return ctx
}

// TraceQueryEnd does nothing.
func (l *StatementLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart does nothing.
func (l *StatementLog) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

// TraceBatchQuery records the batch's statement.
func (l *StatementLog) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	l.add(data.SQL, data.Args)
}

// TraceBatchEnd does nothing.
func (l *StatementLog) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// Len is the number of distinct statements recorded.
func (l *StatementLog) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order)
}

var dml = regexp.MustCompile(`(?is)^\s*(?:/\*.*?\*/\s*)*(select|insert|update|delete|with)\b`)

// TenantFilterViolations asks PostgreSQL how each recorded statement
// touches the tenant tables (TenantTables), by planning it with its
// recorded arguments (EXPLAIN (VERBOSE, FORMAT JSON), which runs nothing)
// on conn, a database migrated like the one the statements ran on. The
// planner has resolved aliases, subqueries, CTEs and views, and qualifies
// every column, so no SQL is parsed here. It returns one line per
// statement that
//
//   - scans a tenant table with no condition on that table's tenant_id:
//     neither its own filter or index condition nor a join condition
//     names alias.tenant_id (a statement marked AllTenants may, read only);
//   - is marked AllTenants but writes or locks rows;
//   - cannot be planned.
//
// Inserts are not judged: their rows carry their tenant_id column.
func (l *StatementLog) TenantFilterViolations(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	tables, err := TenantTables(ctx, conn)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	order := slices.Clone(l.order)
	args := make(map[string][]any, len(l.args))
	for k, v := range l.args {
		args[k] = v
	}
	l.mu.Unlock()
	var bad []string
	for _, sql := range order {
		if !dml.MatchString(sql) {
			continue
		}
		var out []byte
		err := conn.QueryRow(ctx, "EXPLAIN (VERBOSE, FORMAT JSON) "+sql, args[sql]...).Scan(&out)
		if err != nil {
			bad = append(bad, fmt.Sprintf("cannot plan (%v): %s", err, oneLine(sql)))
			continue
		}
		var plans []struct{ Plan planNode }
		if err := json.Unmarshal(out, &plans); err != nil || len(plans) != 1 {
			return nil, fmt.Errorf("schematest: EXPLAIN output: %v", err)
		}
		for _, problem := range judgePlan(&plans[0].Plan, tables, strings.Contains(sql, AllTenants)) {
			bad = append(bad, problem+": "+oneLine(sql))
		}
	}
	return bad, nil
}

// planNode is the part of an EXPLAIN (FORMAT JSON) node the check reads.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	Operation string     `json:"Operation"`
	Relation  string     `json:"Relation Name"`
	Alias     string     `json:"Alias"`
	Plans     []planNode `json:"Plans"`
	// Conditions, qualified by alias under VERBOSE.
	Filter      string `json:"Filter"`
	IndexCond   string `json:"Index Cond"`
	RecheckCond string `json:"Recheck Cond"`
	TIDCond     string `json:"TID Cond"`
	JoinFilter  string `json:"Join Filter"`
	HashCond    string `json:"Hash Cond"`
	MergeCond   string `json:"Merge Cond"`
}

func (n *planNode) own() string {
	return n.Filter + " " + n.IndexCond + " " + n.RecheckCond + " " + n.TIDCond
}

func (n *planNode) joins() string { return n.JoinFilter + " " + n.HashCond + " " + n.MergeCond }

func judgePlan(root *planNode, tables []string, allTenants bool) []string {
	var all strings.Builder
	var scans []*planNode
	writes := false
	var walk func(n *planNode)
	walk = func(n *planNode) {
		all.WriteString(n.own() + " " + n.joins() + " ")
		switch {
		case n.NodeType == "ModifyTable" || n.NodeType == "LockRows":
			writes = true
		case n.Relation != "" && slices.Contains(tables, n.Relation):
			scans = append(scans, n)
		}
		for i := range n.Plans {
			walk(&n.Plans[i])
		}
	}
	walk(root)
	if allTenants {
		if writes {
			return []string{"marked " + AllTenants + " but writes or locks rows"}
		}
		return nil
	}
	var bad []string
	for _, s := range scans {
		if !strings.Contains(all.String(), s.Alias+".tenant_id") {
			bad = append(bad, fmt.Sprintf("%s scan of %s (alias %s) without its tenant_id", s.NodeType, s.Relation, s.Alias))
		}
	}
	return bad
}

func oneLine(sql string) string { return strings.Join(strings.Fields(sql), " ") }
