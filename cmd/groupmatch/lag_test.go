package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// A process reports the lag of the groups of the stages it does not run.
func TestLagOfOtherStages(t *testing.T) {
	o := &options{topicPrefix: "p.", groupPrefix: "g-"}
	tp := o.topics()
	ingest := stream.LagTarget{Group: o.groupID(stageIngest), Topic: tp.Requests}
	matcher := stream.LagTarget{Group: o.groupID(stageMatcher), Topic: tp.Records}
	rematch := stream.LagTarget{Group: "g-rematcher", Topic: "p.directory"}
	sink := stream.LagTarget{Group: o.groupID(stageSink), Topic: tp.Resolved}
	dlq := stream.LagTarget{Group: dlqReplayGroup, Topic: tp.DLQ}
	for _, c := range []struct {
		stages []string
		want   []stream.LagTarget
	}{
		{[]string{stageIngest, stageMatcher, stageSink}, nil},
		{[]string{stageIngest}, []stream.LagTarget{matcher, rematch, sink, dlq}},
		{[]string{stageMatcher}, []stream.LagTarget{ingest, sink, dlq}},
		{[]string{stageSink}, []stream.LagTarget{ingest, matcher, rematch}},
	} {
		if got := lagOfOtherStages(o, c.stages); !slices.Equal(got, c.want) {
			t.Errorf("%v: %+v, want %+v", c.stages, got, c.want)
		}
	}
}

// With no matcher running at all (every member down), a sink process on
// Apache Kafka reports the matcher group's lag, in messages and in
// seconds, while a record waits on the records topic.
func TestLagWithoutMembers(t *testing.T) {
	brokers := testKafka(t)
	names := namesFor(t)
	_, dbURL := schematest.NewPool(t)
	o := &options{
		brokers: brokers, databaseURL: dbURL, adminAddr: "127.0.0.1:0", topicPrefix: names.topicPrefix, groupPrefix: names.groupPrefix,
		partitions: 2, matcherChunk: 100, sinkChunk: 100, dbMaxConns: 4, pendingTimeout: 30 * time.Second,
	}
	_, admin := runTheseStagesOn(t, o, slog.New(slog.NewJSONHandler(io.Discard, nil)), false, stageSink)
	tp := o.topics()
	waitTopics(t, brokers, tp.Records)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(brokers), Topic: tp.Records, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(kafka.Message, ...int) int { return 1 })}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("waiting"), Time: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}

	series := func(name, partition string) *regexp.Regexp {
		return regexp.MustCompile(fmt.Sprintf(`(?m)^%s\{group="%s",partition="%s",stage="sink",topic="%s"\} (\S+)$`,
			name, regexp.QuoteMeta(o.groupID(stageMatcher)), partition, regexp.QuoteMeta(tp.Records)))
	}
	var body string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		body = scrape(t, admin)
		msgs, secs := series("groupmatch_kafka_consumer_lag_messages", "1").FindStringSubmatch(body), series("groupmatch_kafka_consumer_lag_seconds", "1").FindStringSubmatch(body)
		if msgs == nil || secs == nil || msgs[1] != "1" {
			continue
		}
		age, err := strconv.ParseFloat(secs[1], 64)
		if err != nil || age < 3600 || age > 3600+120 {
			t.Fatalf("lag of a record an hour old: %s s", secs[1])
		}
		if m := series("groupmatch_kafka_consumer_lag_seconds", "0").FindStringSubmatch(body); m == nil || m[1] != "0" {
			t.Errorf("lag in seconds of an empty partition: %v, want 0", m)
		}
		return
	}
	t.Fatalf("no matcher lag of 1 message with its age in the sink's scrape:\n%s", grepLines(body, "consumer_lag"))
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []byte
	for _, l := range regexp.MustCompile(`(?m)^.*`+regexp.QuoteMeta(sub)+`.*$`).FindAllString(s, -1) {
		out = append(out, l...)
		out = append(out, '\n')
	}
	return string(out)
}
