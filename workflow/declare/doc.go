// Package declare reads workflow definitions written as documents (YAML
// or JSON) whose actions are HTTP requests, and turns them into
// *workflow.Definition values an engine runs like any other.
//
//	name: order
//	version: 1
//	initial: pending
//	vars: {stock: "http://localhost:9100"}
//	states:
//	  - name: pending
//	  - {name: reserved, terminal: success}
//	transitions:
//	  - from: pending
//	    to: reserved                 # no event: taken on entering pending
//	    action:
//	      name: reserve
//	      request:    {method: POST, url: "{{vars.stock}}/reservations", body: {sku: "{{input.sku}}"}}
//	      compensate: {method: DELETE, url: "{{vars.stock}}/reservations/{{steps.reserve.id}}"}
//
// Parse reads one document and LoadDir every document of a directory;
// both return definitions that passed workflow.Validate, ready for
// (*workflow.Registry).Register. A definition's Source is its document,
// so its fingerprint changes with any byte of it: a changed document
// needs a new version.
//
// # Documents
//
// A document is strict: an unknown field, a value of the wrong type or a
// missing required field is an error, as is a YAML anchor, alias, tag or
// merge key. Durations are Go duration strings ("15m", "1h30m"), versions
// positive integers. docs/declarative-workflows.md describes every field,
// and docs/workflow-schema.json is its JSON Schema.
//
// # Actions
//
// An action's request (its Run) and compensate (its Compensate) are HTTP
// requests: method, url, headers, an optional JSON body and a timeout.
// Every request carries the step key as Idempotency-Key and the
// instance's fencing token as Fencing-Token (FencingTokenHeader), and
// Content-Type: application/json when it has a body. The answer decides
// the step:
//
//   - 2xx: done; the result is the body if it is JSON, else the body as
//     a JSON string, and null if it is empty;
//   - 408, 429, 5xx and transport errors: the attempt failed and is
//     retried by the action's retry policy, waiting at least what a
//     Retry-After header (seconds or an HTTP date) asks;
//   - any other 4xx (and an unfollowed 1xx or 3xx): the action fails for
//     good (workflow.Permanent), with the status and up to 1 KiB of the
//     body in the error;
//   - a body over 1 MiB fails the action for good.
//
// # Templates
//
// In a URL, a header value and the strings of a body, {{PATH}} is
// replaced by a value: input.a.b (the instance's input),
// steps.NAME.a.b (the result of the latest completion of action NAME),
// event.a.b (the payload of the event that started the step),
// instance.id, step.key, step.token, step.attempt and vars.NAME. A body
// string that is exactly one {{PATH}} becomes the JSON value itself (a
// number stays a number); elsewhere the value is written as text. A path
// with no value fails the step for good. Templates are checked when the
// document is parsed.
//
// # Choosing the next event
//
// An action's next rules read its result and choose the event that
// follows it (workflow.Action.Next): the first rule whose when matches
// (a path of the result equals a value, or is in a list) gives the event;
// a rule without when matches anything.
//
// # Errors
//
// Every problem is an *Error with the file, line and column of the
// element at fault; Parse and LoadDir join them all. An Error wraps
// ErrSyntax for a problem of the document itself, or the
// *workflow.DefinitionError of a rule of workflow.Validate the
// definition breaks, so errors.Is(err, workflow.ErrInvalidDefinition)
// tells them apart:
//
//	order.yaml:9:5: states[3] "lost": unreachable from initial state "pending"
package declare
