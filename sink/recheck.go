package sink

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
)

// recheckBatch is the most pending bindings one announce transaction
// publishes: a few hundred directory messages at most.
const recheckBatch = 100

// announce publishes the recheck messages of up to recheckBatch pending
// bindings not yet announced, tenant by tenant, and returns how many
// bindings it announced. It reads which tenants have some without locks,
// then, per tenant, in one transaction: locks up to recheckBatch of its
// unannounced bindings (FOR UPDATE SKIP LOCKED: another relay's, or those
// a late match is claiming, are left), publishes one DirectoryRecheck per
// distinct (kind, value) among their identities (acks from all replicas),
// and marks them announced. A crash between Kafka's acknowledgement and
// the commit repeats the rechecks, which the re-matcher must take as
// idempotent (it is: a recheck only makes it look again).
func (r *Relay) announce(ctx context.Context) (int, error) {
	rows, err := r.db.Query(ctx, `SELECT /* all tenants */ DISTINCT tenant_id FROM pending_bindings
		WHERE NOT announced LIMIT $1`, recheckBatch)
	if err != nil {
		return 0, fmt.Errorf("sink: relay: read unannounced bindings: %w", err)
	}
	tenants, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("sink: relay: read unannounced bindings: %w", err)
	}
	slices.Sort(tenants)
	n := 0
	for _, t := range tenants {
		sent, err := r.announceTenant(ctx, t)
		n += sent
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

type identityKey struct {
	kind  pipeline.IdentityKind
	value string
}

func (r *Relay) announceTenant(ctx context.Context, tenantID int64) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT batch_id, rec_index, pending FROM pending_bindings
			WHERE tenant_id = $1 AND NOT announced
			ORDER BY batch_id, rec_index LIMIT $2 FOR UPDATE SKIP LOCKED`, tenantID, recheckBatch)
		if err != nil {
			return err
		}
		var batchIDs []int64
		var indexes []int32
		var msgs []kafka.Message
		seen := make(map[identityKey]bool)
		for rows.Next() {
			var b int64
			var i int32
			var p pipeline.Pending
			if err := rows.Scan(&b, &i, &p); err != nil {
				rows.Close()
				return err
			}
			batchIDs, indexes = append(batchIDs, b), append(indexes, i)
			for kind, value := range p.Identities {
				k := identityKey{kind, value}
				if seen[k] {
					continue
				}
				seen[k] = true
				m := pipeline.DirectoryMessage{Type: pipeline.DirectoryRecheck, TenantID: tenantID, Kind: kind, Value: value}
				v, err := pipeline.EncodeDirectory(m)
				if err != nil {
					rows.Close()
					return err
				}
				msgs = append(msgs, kafka.Message{Key: pipeline.DirectoryKey(m), Value: v})
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(batchIDs) == 0 {
			return nil
		}
		if len(msgs) > 0 {
			if err := r.dir.WriteMessages(ctx, msgs...); err != nil {
				return fmt.Errorf("write rechecks: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `
			UPDATE pending_bindings p SET announced = true
			FROM unnest($2::bigint[], $3::int[]) AS u(b, i)
			WHERE p.tenant_id = $1 AND p.batch_id = u.b AND p.rec_index = u.i`, tenantID, batchIDs, indexes); err != nil {
			return err
		}
		n = len(batchIDs)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sink: relay: announce pending bindings of tenant %d: %w", tenantID, err)
	}
	return n, nil
}
