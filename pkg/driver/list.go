package driver

import (
	"context"

	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// page picks entries [start, end) of a list of n sorted by ID, for a
// request's max_entries and starting_token; the token is the index of
// the next entry. A token that is not one gets Aborted, as CSI asks.
func page(n int, max int32, token string) (start, end int, next string, err error) {
	if max < 0 {
		return 0, 0, "", invalid("max_entries %d is negative", max)
	}
	if token != "" {
		i, perr := strconv.ParseUint(token, 10, 31)
		if perr != nil || int(i) > n {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting_token %q is not a token of this list", token)
		}
		start = int(i)
	}
	end = n
	if max > 0 && start+int(max) < n {
		end = start + int(max)
		next = strconv.Itoa(end)
	}
	return start, end, next, nil
}

func (c controllerServer) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	all := st.ListVolumes()
	start, end, next, err := page(len(all), req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range all[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: c.d.csiVolume(v, nil),
			Status: &csi.ListVolumesResponse_VolumeStatus{},
		})
	}
	return resp, nil
}
