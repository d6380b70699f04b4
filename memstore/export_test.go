package memstore

// NewColliding is New with a map-key hash of three values: most records
// share their hash with another one and live in Store.collided.
func NewColliding(cfg *Config) *Store {
	s := New(cfg)
	s.collide = true
	return s
}

// Collided is how many records are kept apart for their hash.
func (s *Store) Collided() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.collided)
		sh.mu.Unlock()
	}
	return n
}
