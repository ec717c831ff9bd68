package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Events records Kubernetes Events on the relay's pod, so that `kubectl describe pod` tells what the agent did.
//
// Queue never blocks and never talks to the API server: only Flush does, from the agent's reporter goroutine, so an
// API server that is slow or drops packets cannot delay a pass. What waits is bounded (maxPending, the oldest
// dropped first) and the drops are counted (Dropped, in the status).
//
// Events aggregate the way client-go's recorder does (tools/record/events_cache.go, eventLogger.eventObserve): the
// same type, reason and message on the pod updates one object (count, lastTimestamp) instead of adding one, and at
// most maxNewPerMinute new objects are created a minute (client-go's EventSourceObjectSpamFilter: a token bucket
// per source and object); what is over the cap is dropped and counted. Done by hand: client-go would add its whole
// API machinery to a 10 MB static binary for these two rules.
type Events struct {
	kube *Kube
	cfg  Config
	now  func() time.Time
	logf func(string, ...any)

	mu      sync.Mutex
	pending []event
	last    map[string]string        // reason -> message of the last Event with that reason (Once)
	posted  map[eventKey]postedEvent // the objects created, for aggregation
	created []time.Time              // when the objects of the last minute were created (the cap)
	dropped int
	seq     int
}

type event struct {
	Type, Reason, Message string
	At                    time.Time
}

type eventKey struct{ Type, Reason, Message string }

type postedEvent struct {
	Name  string
	Count int
	First time.Time
}

const (
	// maxPending: Events kept while the API server does not take them (a minute's worth and more at normal rates).
	maxPending = 20
	// maxNewPerMinute: new Event objects a minute; client-go's spam filter allows a burst of 25 then one per 5 min.
	maxNewPerMinute = 10
	// maxRemembered: Events whose objects are remembered for aggregation (the agent's messages are few).
	maxRemembered = 256
)

// Queue keeps an Event to post at the next Flush, dropping the oldest waiting one when maxPending wait.
func (e *Events) Queue(typ, reason, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = map[string]string{}
	}
	e.last[reason] = message
	if len(e.pending) == maxPending {
		e.logf("the API server does not take Events: dropping the oldest waiting (%s)", e.pending[0].Reason)
		e.pending = e.pending[1:]
		e.dropped++
	}
	e.pending = append(e.pending, event{typ, reason, message, e.now()})
}

// Once queues an Event unless the last one with this reason said the same.
func (e *Events) Once(typ, reason, message string) {
	e.mu.Lock()
	same := e.last[reason] == message
	e.mu.Unlock()
	if !same {
		e.Queue(typ, reason, message)
	}
}

// Dropped is how many Events were dropped (queue full, or over the cap of new objects).
func (e *Events) Dropped() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dropped
}

// Flush posts the waiting Events, oldest first; it stops at the first failure (kept for the next Flush). Only the
// reporter goroutine calls it.
func (e *Events) Flush(ctx context.Context) {
	for {
		e.mu.Lock()
		if len(e.pending) == 0 {
			e.mu.Unlock()
			return
		}
		ev := e.pending[0]
		e.mu.Unlock()
		if err := e.send(ctx, ev); err != nil {
			e.logf("cannot post Event %s (kept for later): %v", ev.Reason, err)
			return
		}
		e.mu.Lock()
		if len(e.pending) > 0 && e.pending[0] == ev {
			e.pending = e.pending[1:]
		}
		e.mu.Unlock()
	}
}

// send updates the object of an earlier identical Event, or creates one if the cap allows.
func (e *Events) send(ctx context.Context, ev event) error {
	key := eventKey{ev.Type, ev.Reason, ev.Message}
	e.mu.Lock()
	prev, seen := e.posted[key]
	e.mu.Unlock()
	if seen {
		prev.Count++
		patch := map[string]any{"count": prev.Count, "lastTimestamp": ev.At.UTC().Format(time.RFC3339)}
		err := e.kube.Do(ctx, http.MethodPatch, e.path(prev.Name), "application/merge-patch+json", patch, nil)
		if err == nil {
			e.remember(key, prev)
			return nil
		}
		if !IsNotFound(err) {
			return err
		}
		// the API server let it expire (--event-ttl, an hour by default): a new object
	}
	e.mu.Lock()
	cutoff := e.now().Add(-time.Minute)
	for len(e.created) > 0 && e.created[0].Before(cutoff) {
		e.created = e.created[1:]
	}
	if len(e.created) >= maxNewPerMinute {
		e.dropped++
		e.mu.Unlock()
		e.logf("more than %d new Events in a minute: dropping %s: %s", maxNewPerMinute, ev.Reason, ev.Message)
		return nil
	}
	e.seq++
	obj := postedEvent{Name: fmt.Sprintf("%s.%x.%d", e.cfg.Pod, ev.At.UnixNano(), e.seq), Count: 1, First: ev.At}
	e.mu.Unlock()
	at := ev.At.UTC().Format(time.RFC3339)
	body := map[string]any{
		"apiVersion": "v1",
		"kind":       "Event",
		"metadata":   map[string]any{"name": obj.Name, "namespace": e.cfg.Namespace},
		"involvedObject": map[string]any{
			"apiVersion": "v1", "kind": "Pod", "name": e.cfg.Pod, "namespace": e.cfg.Namespace, "uid": e.cfg.PodUID,
			"fieldPath": "spec.containers{agent}",
		},
		"type": ev.Type, "reason": ev.Reason, "message": ev.Message,
		"source":             map[string]any{"component": "relay-agent"},
		"reportingComponent": "relay-agent",
		"reportingInstance":  e.cfg.Pod,
		"firstTimestamp":     at,
		"lastTimestamp":      at,
		"count":              1,
	}
	if err := e.kube.Do(ctx, http.MethodPost, e.path(""), "application/json", body, nil); err != nil {
		return err
	}
	e.mu.Lock()
	e.created = append(e.created, e.now())
	e.mu.Unlock()
	e.remember(key, obj)
	return nil
}

func (e *Events) remember(key eventKey, obj postedEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.posted == nil || len(e.posted) >= maxRemembered {
		e.posted = map[eventKey]postedEvent{} // forgetting costs at most one more object per message
	}
	e.posted[key] = obj
}

func (e *Events) path(name string) string {
	p := "/api/v1/namespaces/" + url.PathEscape(e.cfg.Namespace) + "/events"
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}
