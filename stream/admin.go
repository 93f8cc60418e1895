package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// TopicSpec is a topic to create, and the settings an existing one is
// checked against.
type TopicSpec struct {
	Name       string
	Partitions int
	// ReplicationFactor defaults to 1; use 3 on a production cluster.
	ReplicationFactor int
	// MinInsyncReplicas is the topic's min.insync.replicas; default
	// DefaultMinInsyncReplicas(ReplicationFactor).
	MinInsyncReplicas int
	// Retention is the topic's retention.ms, rounded to milliseconds; zero
	// leaves the broker's default and is not checked, negative keeps
	// messages for ever (retention.ms=-1).
	Retention time.Duration
}

// DefaultMinInsyncReplicas is the min.insync.replicas of a topic with rf
// replicas unless its spec says otherwise: rf-1, at least 1. With
// RequireAll writers a write then survives one broker down, and is on at
// least two brokers when rf is 3.
func DefaultMinInsyncReplicas(rf int) int { return max(1, rf-1) }

func (s TopicSpec) withDefaults() TopicSpec {
	if s.ReplicationFactor <= 0 {
		s.ReplicationFactor = 1
	}
	if s.MinInsyncReplicas <= 0 {
		s.MinInsyncReplicas = DefaultMinInsyncReplicas(s.ReplicationFactor)
	}
	return s
}

// retentionMs is the retention.ms value of the spec, "" when unset.
func (s TopicSpec) retentionMs() string {
	switch {
	case s.Retention == 0:
		return ""
	case s.Retention < 0:
		return "-1"
	}
	return strconv.FormatInt(s.Retention.Milliseconds(), 10)
}

// TopicState is what EnsureTopics found or did for one topic.
type TopicState struct {
	Spec    TopicSpec // with its defaults filled in
	Created bool
	// Drift lists the settings in which an existing topic differs from
	// Spec, one per entry, e.g. "partitions 4, want 8". Nothing is
	// changed: partitions can only grow (and regrowing moves keys between
	// partitions) and replicas move by reassignment, which are an
	// operator's decisions.
	Drift []string
}

// EnsureTopics creates the topics of specs that do not exist yet, with
// their partitions, replication factor, min.insync.replicas and retention,
// and compares the existing ones with their specs. It never changes an
// existing topic, so it is safe to repeat. The states are in spec order.
func EnsureTopics(ctx context.Context, brokers []string, sec *Security, specs []TopicSpec) ([]TopicState, error) {
	client := sec.Client(brokers, 10*time.Second)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	states := make([]TopicState, len(specs))
	names := make([]string, len(specs))
	for i, s := range specs {
		states[i].Spec = s.withDefaults()
		names[i] = s.Name
	}
	existing, err := describeTopics(ctx, client, names)
	if err != nil {
		return nil, err
	}
	req := &kafka.CreateTopicsRequest{}
	for _, st := range states {
		if _, ok := existing[st.Spec.Name]; ok {
			continue
		}
		s := st.Spec
		configs := []kafka.ConfigEntry{{ConfigName: "min.insync.replicas", ConfigValue: strconv.Itoa(s.MinInsyncReplicas)}}
		if ms := s.retentionMs(); ms != "" {
			configs = append(configs, kafka.ConfigEntry{ConfigName: "retention.ms", ConfigValue: ms})
		}
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: s.Name, NumPartitions: s.Partitions,
			ReplicationFactor: s.ReplicationFactor, ConfigEntries: configs})
	}
	created := make(map[string]bool)
	if len(req.Topics) > 0 {
		resp, err := client.CreateTopics(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("stream: create topics: %w", err)
		}
		for name, err := range resp.Errors {
			switch {
			case err == nil:
				created[name] = true
			case errors.Is(err, kafka.TopicAlreadyExists): // created meanwhile; compared below
			default:
				return nil, fmt.Errorf("stream: create topic %s: %w", name, err)
			}
		}
	}
	var recheck []string
	for _, st := range states {
		if _, ok := existing[st.Spec.Name]; !ok && !created[st.Spec.Name] {
			recheck = append(recheck, st.Spec.Name)
		}
	}
	if len(recheck) > 0 {
		more, err := describeTopics(ctx, client, recheck)
		if err != nil {
			return nil, err
		}
		for name, t := range more {
			existing[name] = t
		}
	}
	for i := range states {
		s := states[i].Spec
		if created[s.Name] {
			states[i].Created = true
			continue
		}
		t, ok := existing[s.Name]
		if !ok {
			return nil, fmt.Errorf("stream: topic %s was neither created nor found", s.Name)
		}
		states[i].Drift = t.drift(s)
	}
	return states, nil
}

// CreateTopics is EnsureTopics without the report: it creates the missing
// topics and leaves existing ones as they are.
func CreateTopics(ctx context.Context, brokers []string, sec *Security, specs []TopicSpec) error {
	_, err := EnsureTopics(ctx, brokers, sec, specs)
	return err
}

// topicSettings are an existing topic's settings that TopicSpec states.
type topicSettings struct {
	partitions, replicas int
	minISR, retentionMs  string
}

func (t topicSettings) drift(s TopicSpec) []string {
	var out []string
	if t.partitions != s.Partitions {
		out = append(out, fmt.Sprintf("partitions %d, want %d", t.partitions, s.Partitions))
	}
	if t.replicas != s.ReplicationFactor {
		out = append(out, fmt.Sprintf("replication factor %d, want %d", t.replicas, s.ReplicationFactor))
	}
	if want := strconv.Itoa(s.MinInsyncReplicas); t.minISR != want {
		out = append(out, fmt.Sprintf("min.insync.replicas %s, want %s", orUnset(t.minISR), want))
	}
	if want := s.retentionMs(); want != "" && t.retentionMs != want {
		out = append(out, fmt.Sprintf("retention.ms %s, want %s", orUnset(t.retentionMs), want))
	}
	return out
}

func orUnset(v string) string {
	if v == "" {
		return "unset"
	}
	return v
}

// describeTopics returns the settings of those of names that exist.
func describeTopics(ctx context.Context, client *kafka.Client, names []string) (map[string]topicSettings, error) {
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return nil, fmt.Errorf("stream: describe topics: %w", err)
	}
	out := make(map[string]topicSettings)
	var resources []kafka.DescribeConfigRequestResource
	for _, t := range meta.Topics {
		if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("stream: describe topic %s: %w", t.Name, t.Error)
		}
		s := topicSettings{partitions: len(t.Partitions)}
		for _, p := range t.Partitions {
			s.replicas = max(s.replicas, len(p.Replicas))
		}
		out[t.Name] = s
		resources = append(resources, kafka.DescribeConfigRequestResource{ResourceType: kafka.ResourceTypeTopic,
			ResourceName: t.Name, ConfigNames: []string{"min.insync.replicas", "retention.ms"}})
	}
	if len(resources) == 0 {
		return out, nil
	}
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: resources})
	if err != nil {
		return nil, fmt.Errorf("stream: describe topic configs: %w", err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return nil, fmt.Errorf("stream: describe configs of %s: %w", r.ResourceName, r.Error)
		}
		s, ok := out[r.ResourceName]
		if !ok {
			continue
		}
		for _, e := range r.ConfigEntries {
			switch e.ConfigName {
			case "min.insync.replicas":
				s.minISR = e.ConfigValue
			case "retention.ms":
				s.retentionMs = e.ConfigValue
			}
		}
		out[r.ResourceName] = s
	}
	return out, nil
}

// Ping checks that a broker of the cluster answers a metadata request over
// a connection secured by sec. It reuses the connections of sec's writers,
// so that frequent readiness probes cost no new handshakes.
func Ping(ctx context.Context, brokers []string, sec *Security) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: sec.writerTransport()}
	if _, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}}); err != nil {
		return fmt.Errorf("stream: kafka unreachable: %w", err)
	}
	return nil
}

// HasCommitted reports whether group has committed an offset on any
// partition of topic. A topic or group that does not exist has none; so
// does a group sec's principal may not describe (the answer is then
// "cannot tell", reported as false). Errors that are kafka.Error may be
// temporary (no coordinator yet): callers retry those.
func HasCommitted(ctx context.Context, brokers []string, sec *Security, group, topic string) (bool, error) {
	client := sec.Client(brokers, 10*time.Second)
	defer client.Transport.(*kafka.Transport).CloseIdleConnections()
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return false, fmt.Errorf("stream: committed offsets of %s: %w", group, err)
	}
	var partitions []int
	for _, t := range meta.Topics {
		if t.Name != topic || t.Error != nil {
			continue
		}
		for _, p := range t.Partitions {
			partitions = append(partitions, p.ID)
		}
	}
	if len(partitions) == 0 {
		return false, nil
	}
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: partitions}})
	if err != nil {
		return false, fmt.Errorf("stream: committed offsets of %s: %w", group, err)
	}
	if resp.Error != nil {
		if errors.Is(resp.Error, kafka.GroupIdNotFound) || errors.Is(resp.Error, kafka.GroupAuthorizationFailed) {
			return false, nil
		}
		return false, fmt.Errorf("stream: committed offsets of %s: %w", group, resp.Error)
	}
	for _, p := range resp.Topics[topic] {
		switch {
		case p.Error == nil:
			if p.CommittedOffset >= 0 {
				return true, nil
			}
		case errors.Is(p.Error, kafka.GroupIdNotFound), errors.Is(p.Error, kafka.UnknownTopicOrPartition):
		default:
			return false, fmt.Errorf("stream: committed offset of %s on %s/%d: %w", group, topic, p.Partition, p.Error)
		}
	}
	return false, nil
}
