// Package storeurl holds what the stores' URL openers (idem.RegisterStore)
// share: taking idem's own query parameter (?schema=, ?prefix=) out of a
// URL before the rest goes to the driver, which would refuse it or send it
// to the server.
package storeurl

import (
	"fmt"
	"net/url"

	"github.com/idemkit/idem"
)

// CutParam returns a copy of u without the query parameter name, and the
// parameter's value ("" when absent). A parameter given twice is an error
// wrapping idem.ErrInvalid: which one was meant cannot be known.
func CutParam(u *url.URL, name string) (rest *url.URL, value string, err error) {
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, "", fmt.Errorf("%w: the store URL's query does not parse: %v", idem.ErrInvalid, err)
	}
	if vs := q[name]; len(vs) > 1 {
		return nil, "", fmt.Errorf("%w: the store URL gives ?%s= %d times; give it once", idem.ErrInvalid, name, len(vs))
	} else if len(vs) == 1 {
		value = vs[0]
	}
	r := *u
	if _, ok := q[name]; ok {
		q.Del(name)
		r.RawQuery = q.Encode()
	}
	return &r, value, nil
}
