package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
)

// tlsHelp documents the TLS flags of serve and proxy.
const tlsHelp = `  --tls-cert FILE        serve HTTPS with this PEM certificate (chain);
                         needs --tls-key (default: plain HTTP)
  --tls-key FILE         the PEM private key of --tls-cert
`

// tlsFiles are the --tls-cert and --tls-key of a command.
type tlsFiles struct{ cert, key string }

func (t *tlsFiles) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", "", "")
	fs.StringVar(&t.key, "tls-key", "", "")
}

// scheme is how the startup line names the listener.
func (t *tlsFiles) scheme() string {
	if t.cert != "" {
		return "https"
	}
	return "http"
}

// check says what is wrong with the flags before anything starts.
func (t *tlsFiles) check() error {
	if (t.cert == "") != (t.key == "") {
		return errors.New("--tls-cert and --tls-key go together: give both files, or neither for plain HTTP")
	}
	return nil
}

// listen listens on addr, with TLS when the flags name a certificate. The
// certificate is loaded once, at start: a bad file stops the command
// rather than failing every handshake.
func (t *tlsFiles) listen(addr string) (net.Listener, error) {
	var cfg *tls.Config
	if t.cert != "" {
		cert, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", t.cert, t.key, err)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	return ln, nil
}
