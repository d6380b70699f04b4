package workflow

import (
	"fmt"
	"slices"
	"sort"
	"sync"
)

// Registry holds workflow definitions by name and version. A new version
// registers beside the old ones, so instances started on an old version
// can finish on it while new instances start on the latest. The zero value
// is an empty registry ready to use; it is safe for concurrent use.
type Registry struct {
	mu   sync.RWMutex
	defs map[string]map[int]*registered
}

type registered struct {
	def         *Definition
	fingerprint string
}

// TypeInfo describes one registered workflow type.
type TypeInfo struct {
	Name string
	// Versions are the registered versions, in increasing order.
	Versions []int
}

// NewRegistry returns an empty registry. It is the same as new(Registry).
func NewRegistry() *Registry { return new(Registry) }

// Register validates d and adds a copy of it under (d.Name, d.Version). An
// invalid definition is refused with the error of Validate (wrapping
// ErrInvalidDefinition). Registering a definition with the same
// fingerprint as the one already under that name and version does nothing
// and succeeds, so every process of a deployment can register its
// definitions at start; a different structure under a registered version
// is refused with ErrVersionConflict. Functions (Run, Compensate,
// Retryable) are not compared: a re-registration with the same
// fingerprint keeps the functions registered first.
func (r *Registry) Register(d *Definition) error {
	if d == nil {
		return fmt.Errorf("%w: definition is nil", ErrInvalidDefinition)
	}
	if err := d.Validate(); err != nil {
		return err
	}
	c := d.clone()
	fp := c.Fingerprint()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.defs == nil {
		r.defs = make(map[string]map[int]*registered)
	}
	versions := r.defs[c.Name]
	if versions == nil {
		versions = make(map[int]*registered)
		r.defs[c.Name] = versions
	}
	if prev, ok := versions[c.Version]; ok {
		if prev.fingerprint == fp {
			return nil
		}
		return fmt.Errorf("%w: %q version %d (registered fingerprint %.12s, new %.12s)", ErrVersionConflict, c.Name, c.Version, prev.fingerprint, fp)
	}
	versions[c.Version] = &registered{def: c, fingerprint: fp}
	return nil
}

// Lookup returns the definition registered under name and version, or an
// error wrapping ErrNotRegistered. The definition must not be modified.
func (r *Registry) Lookup(name string, version int) (*Definition, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if reg, ok := r.defs[name][version]; ok {
		return reg.def, nil
	}
	return nil, fmt.Errorf("%w: %q version %d", ErrNotRegistered, name, version)
}

// Latest returns the registered definition of name with the greatest
// version, or an error wrapping ErrNotRegistered. The definition must not
// be modified.
func (r *Registry) Latest(name string) (*Definition, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var best *registered
	for _, reg := range r.defs[name] {
		if best == nil || reg.def.Version > best.def.Version {
			best = reg
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotRegistered, name)
	}
	return best.def, nil
}

// Types lists the registered workflow types by name, each with its
// versions.
func (r *Registry) Types() []TypeInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]TypeInfo, 0, len(r.defs))
	for name, versions := range r.defs {
		ti := TypeInfo{Name: name}
		for v := range versions {
			ti.Versions = append(ti.Versions, v)
		}
		slices.Sort(ti.Versions)
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
