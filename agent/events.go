package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Events records Kubernetes Events on the relay's pod, so that `kubectl describe pod` tells what the agent did. An
// Event that cannot be posted (the API server is down) is kept and posted later, up to maxPending.
type Events struct {
	kube *Kube
	cfg  Config
	now  func() time.Time
	logf func(string, ...any)

	mu      sync.Mutex
	pending []event
	last    map[string]string // reason -> message of the last Event with that reason
	seq     int
}

type event struct {
	Type, Reason, Message string
	At                    time.Time
}

const maxPending = 20

// Queue keeps an Event to post at the next Flush.
func (e *Events) Queue(typ, reason, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = map[string]string{}
	}
	e.last[reason] = message
	if len(e.pending) == maxPending {
		e.pending = e.pending[1:]
	}
	e.pending = append(e.pending, event{typ, reason, message, e.now()})
}

// Emit posts an Event now (and whatever waits before it).
func (e *Events) Emit(ctx context.Context, typ, reason, message string) {
	e.Queue(typ, reason, message)
	e.Flush(ctx)
}

// Once posts an Event unless the last one with this reason said the same.
func (e *Events) Once(ctx context.Context, typ, reason, message string) {
	e.mu.Lock()
	same := e.last[reason] == message
	e.mu.Unlock()
	if !same {
		e.Emit(ctx, typ, reason, message)
	}
}

// Flush posts the waiting Events, oldest first; it stops at the first failure. Only the agent's loop calls it.
func (e *Events) Flush(ctx context.Context) {
	for {
		e.mu.Lock()
		if len(e.pending) == 0 {
			e.mu.Unlock()
			return
		}
		ev := e.pending[0]
		e.seq++
		seq := e.seq
		e.mu.Unlock()
		if err := e.post(ctx, ev, seq); err != nil {
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

func (e *Events) post(ctx context.Context, ev event, seq int) error {
	at := ev.At.UTC().Format(time.RFC3339)
	body := map[string]any{
		"apiVersion": "v1",
		"kind":       "Event",
		"metadata": map[string]any{
			"name":      fmt.Sprintf("%s.%x.%d", e.cfg.Pod, ev.At.UnixNano(), seq),
			"namespace": e.cfg.Namespace,
		},
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
	return e.kube.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+url.PathEscape(e.cfg.Namespace)+"/events",
		"application/json", body, nil)
}
