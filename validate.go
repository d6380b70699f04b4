package idem

import (
	"time"
	"unicode/utf8"
)

func validateName(what, s string, max int) error {
	switch {
	case s == "":
		return invalidf("%s is empty", what)
	case len(s) > max:
		return invalidf("%s is %d bytes, over the limit of %d", what, len(s), max)
	case !utf8.ValidString(s):
		return invalidf("%s is not valid UTF-8", what)
	}
	return nil
}

// ValidateKey checks a scope and key against the limits every store keeps:
// both non-empty valid UTF-8 of at most 255 bytes.
func ValidateKey(scope, key string) error {
	if err := validateName("scope", scope, MaxScopeLen); err != nil {
		return err
	}
	return validateName("key", key, MaxKeyLen)
}

func validatePositive(what string, d time.Duration) error {
	if d <= 0 {
		return invalidf("%s must be positive, got %s", what, d)
	}
	return nil
}

func validateToken(t int64) error {
	if t <= 0 {
		return invalidf("token must be positive, got %d", t)
	}
	return nil
}

// Validate checks the parameters; stores call it before doing anything.
func (p *BeginParams) Validate() error {
	if err := ValidateKey(p.Scope, p.Key); err != nil {
		return err
	}
	if len(p.Fingerprint) > MaxFingerprint {
		return invalidf("fingerprint is %d bytes, over the limit of %d", len(p.Fingerprint), MaxFingerprint)
	}
	if !utf8.ValidString(p.Fingerprint) {
		// Stores keep fingerprints as text (JSON, PostgreSQL): a non-UTF-8
		// one would not compare equal after a round trip.
		return invalidf("fingerprint is not valid UTF-8 (send a hex or base64 digest)")
	}
	if err := validatePositive("lease", p.Lease); err != nil {
		return err
	}
	if err := validatePositive("window", p.Window); err != nil {
		return err
	}
	if p.Retention < 0 {
		return invalidf("retention must not be negative, got %s", p.Retention)
	}
	return nil
}

// Validate checks the parameters; stores call it before doing anything.
func (p *CompleteParams) Validate() error {
	if err := ValidateKey(p.Scope, p.Key); err != nil {
		return err
	}
	if err := validateToken(p.Token); err != nil {
		return err
	}
	for k, v := range p.Outcome.Meta {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return invalidf("outcome meta %q is not valid UTF-8: meta is text, put bytes in Data", k)
		}
	}
	return nil
}

// Validate checks the parameters; stores call it before doing anything.
func (p *ReleaseParams) Validate() error {
	if err := ValidateKey(p.Scope, p.Key); err != nil {
		return err
	}
	return validateToken(p.Token)
}

// Validate checks the parameters; stores call it before doing anything.
func (p *ExtendParams) Validate() error {
	if err := ValidateKey(p.Scope, p.Key); err != nil {
		return err
	}
	if err := validateToken(p.Token); err != nil {
		return err
	}
	return validatePositive("lease", p.Lease)
}

// Validate checks the parameters; stores call it before doing anything.
func (p *CheckpointParams) Validate() error {
	if err := ValidateKey(p.Scope, p.Key); err != nil {
		return err
	}
	if err := validateToken(p.Token); err != nil {
		return err
	}
	if err := validateName("checkpoint point", p.Point, MaxPointLen); err != nil {
		return err
	}
	if len(p.Data) > MaxCheckpoint {
		return invalidf("checkpoint data is %d bytes, over the limit of %d", len(p.Data), MaxCheckpoint)
	}
	return nil
}

// Validate checks the parameters; stores call it before doing anything.
func (p *KeyParams) Validate() error { return ValidateKey(p.Scope, p.Key) }

// Validate checks the parameters and applies the default limit.
func (p *ListParams) Validate() error {
	if err := validateName("scope", p.Scope, MaxScopeLen); err != nil {
		return err
	}
	if p.State != "" && !p.State.Valid() {
		return invalidf("state %q is not one of pending, completed, released", p.State)
	}
	if p.Limit < 0 || p.Limit > MaxListSize {
		return invalidf("limit must be between 0 and %d, got %d", MaxListSize, p.Limit)
	}
	if p.Limit == 0 {
		p.Limit = DefaultListSize
	}
	return nil
}

// Validate checks the parameters.
func (p *SweepParams) Validate() error {
	if p.Limit < 0 {
		return invalidf("sweep limit must not be negative, got %d", p.Limit)
	}
	return nil
}
