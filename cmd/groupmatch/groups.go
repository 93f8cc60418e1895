package main

import (
	"context"
	"fmt"
	"time"

	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// legacyGroupPrefix is the prefix of the stages' consumer groups in
// releases before --group-prefix, whatever their topic prefix was.
const legacyGroupPrefix = "groupmatch-"

// checkGroupUpgrade refuses to start a stage whose consumer group has
// committed nothing on its topic while the stage's group of earlier
// releases (groupmatch-<stage>) has: the stage would read the whole topic
// again from its first offset, and requests older than the idempotency
// window would make new batches. That happens on upgrade when the topic
// prefix is not the default, or --group-prefix names new groups; the
// operator keeps the old groups or copies their offsets
// (docs/operations.md, "Consumer groups"). A group coordinator that is not
// ready yet (a broker just started) is waited for up to
// groupCheckPatience.
func checkGroupUpgrade(ctx context.Context, o *options, brokers []string, sec *stream.Security, stages []string) error {
	t := o.topics()
	topicOf := map[string]string{stageIngest: t.Requests, stageMatcher: t.Records, stageSink: t.Resolved}
	for _, stage := range stages {
		group, legacy, topic := o.groupID(stage), legacyGroupPrefix+stage, topicOf[stage]
		if group == legacy || topic == "" {
			continue
		}
		has, err := hasCommitted(ctx, brokers, sec, group, topic)
		if err != nil || has {
			return err
		}
		old, err := hasCommitted(ctx, brokers, sec, legacy, topic)
		if err != nil {
			return err
		}
		if old {
			return fmt.Errorf("consumer group %s has committed nothing on %s but %s, the %s's group of earlier releases, has: "+
				"starting would read %s again from its first offset. Keep the old groups with --group-prefix %s (GROUP_PREFIX), "+
				"or copy the offsets to %s first (docs/operations.md, \"Consumer groups\")",
				group, topic, legacy, stage, topic, legacyGroupPrefix, group)
		}
	}
	return nil
}

// groupCheckPatience bounds the retries of checkGroupUpgrade's look-ups.
const groupCheckPatience = 30 * time.Second

// hasCommitted is stream.HasCommitted, retried while the cluster answers
// transiently (no group coordinator yet, a leader moving).
func hasCommitted(ctx context.Context, brokers []string, sec *stream.Security, group, topic string) (bool, error) {
	var has bool
	err := retry.Do(ctx, retry.Policy{MaxElapsed: groupCheckPatience, Initial: 100 * time.Millisecond, Max: 2 * time.Second}, func() error {
		var err error
		has, err = stream.HasCommitted(ctx, brokers, sec, group, topic)
		return err
	}, nil)
	if err != nil {
		return false, fmt.Errorf("consumer group check: %w", err)
	}
	return has, nil
}
